package dev.shoaldb.android

import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertTrue
import org.junit.Test

/** The per-connection send queue, on its own (plain JUnit: no Android needed). */
class BleSendQueueTest {
    /** A fake OS: records what it was handed, answers with [answers] (then STARTED), completes when told. */
    private class Harness {
        val handed = mutableListOf<String>()
        var answers = ArrayDeque<SendAttempt>()
        var sent = 0
        val retries = mutableListOf<Long>()
        val queue = BleSendQueue(
            transmit = { packet ->
                handed.add(packet.decodeToString())
                answers.removeFirstOrNull() ?: SendAttempt.STARTED
            },
            onSent = { sent++ },
            scheduleRetry = { retries.add(it) },
        )

        fun send(vararg packets: String) = packets.forEach { queue.enqueue(it.encodeToByteArray()) }
    }

    @Test
    fun oneOperationOutstandingAndOneSentPerPacketInOrder() {
        val h = Harness()
        h.send("a", "b", "c")
        assertEquals(listOf("a"), h.handed) // b and c wait for a's completion
        assertTrue(h.queue.busy)
        assertEquals(3, h.queue.size)
        assertEquals(0, h.sent)

        h.queue.onComplete(true)
        assertEquals(listOf("a", "b"), h.handed)
        assertEquals(1, h.sent)
        h.queue.onComplete(true)
        h.queue.onComplete(true)
        assertEquals(listOf("a", "b", "c"), h.handed)
        assertEquals(3, h.sent)
        assertFalse(h.queue.busy)
        assertEquals(0, h.queue.size)

        h.queue.onComplete(true) // a stray completion reports nothing
        assertEquals(3, h.sent)
    }

    @Test
    fun busyPacketIsRetriedNotDropped() {
        val h = Harness()
        h.answers = ArrayDeque(listOf(SendAttempt.BUSY, SendAttempt.BUSY))
        h.send("a", "b")
        assertEquals(listOf("a"), h.handed)
        assertEquals(listOf(5L), h.retries) // first retry soon
        assertTrue(h.queue.retrying)
        assertEquals(2, h.queue.size)

        h.send("c") // a retry is pending: nothing goes out before it
        assertEquals(listOf("a"), h.handed)

        h.queue.onRetry()
        assertEquals(listOf("a", "a"), h.handed)
        assertEquals(listOf(5L, 10L), h.retries) // backs off
        h.queue.onRetry()
        assertEquals(listOf("a", "a", "a"), h.handed) // taken this time
        h.queue.onComplete(true)
        h.queue.onComplete(true)
        h.queue.onComplete(true)
        assertEquals(listOf("a", "a", "a", "b", "c"), h.handed)
        assertEquals(3, h.sent)

        // The back-off starts over after a success.
        h.answers = ArrayDeque(listOf(SendAttempt.BUSY))
        h.send("d")
        assertEquals(5L, h.retries.last())
    }

    @Test
    fun refusedOperationsBackOffUpToTheCap() {
        val h = Harness()
        h.answers = ArrayDeque(List(30) { SendAttempt.FAILED })
        h.send("a")
        repeat(29) { h.queue.onRetry() }
        assertEquals(20L, h.retries.first())
        assertEquals(1_000L, h.retries.last())
        assertTrue(h.retries.all { it <= 1_000L })
        assertEquals(1, h.queue.size)
        h.queue.onRetry()
        h.queue.onComplete(true)
        assertEquals(1, h.sent)
    }

    @Test
    fun failedCompletionSendsTheSamePacketAgain() {
        val h = Harness()
        h.send("a", "b")
        h.queue.onComplete(false)
        assertEquals(0, h.sent)
        assertEquals(1, h.retries.size)
        h.queue.onRetry()
        assertEquals(listOf("a", "a"), h.handed)
        h.queue.onComplete(true)
        h.queue.onComplete(true)
        assertEquals(listOf("a", "a", "b"), h.handed)
        assertEquals(2, h.sent)
    }

    @Test
    fun transmitThatThrowsCountsAsRefused() {
        var calls = 0
        var sent = 0
        val retries = mutableListOf<Long>()
        val queue = BleSendQueue(
            transmit = { if (calls++ == 0) throw IllegalStateException("boom") else SendAttempt.STARTED },
            onSent = { sent++ },
            scheduleRetry = { retries.add(it) },
        )
        queue.enqueue(byteArrayOf(1))
        assertEquals(1, retries.size)
        queue.onRetry()
        queue.onComplete(true)
        assertEquals(1, sent)
    }

    @Test
    fun synchronousCompletionInsideTransmit() {
        // Some stacks (and Robolectric's shadows) call the completion callback before the write call returns.
        val handed = mutableListOf<Int>()
        var sent = 0
        lateinit var queue: BleSendQueue
        queue = BleSendQueue(
            transmit = { packet ->
                handed.add(packet[0].toInt())
                queue.onComplete(true)
                SendAttempt.STARTED
            },
            onSent = { sent++ },
            scheduleRetry = { error("no retry expected") },
        )
        repeat(5) { queue.enqueue(byteArrayOf(it.toByte())) }
        assertEquals(listOf(0, 1, 2, 3, 4), handed)
        assertEquals(5, sent)
        assertEquals(0, queue.size)
    }

    @Test
    fun closeForgetsEverything() {
        val h = Harness()
        h.send("a", "b")
        h.queue.close()
        assertEquals(0, h.queue.size)
        h.queue.onComplete(true)
        h.send("c")
        h.queue.onRetry()
        assertEquals(listOf("a"), h.handed)
        assertEquals(0, h.sent)
    }
}

/** Discovery throttling, on its own. */
class DiscoveryThrottleTest {
    @Test
    fun atMostOncePerSecondPerAddress() {
        val t = DiscoveryThrottle(intervalMs = 1_000)
        val data = byteArrayOf(1, 2)
        assertTrue(t.shouldReport("A", data, 0))
        assertFalse(t.shouldReport("A", data, 10))
        assertFalse(t.shouldReport("A", data, 999))
        assertTrue(t.shouldReport("B", data, 999)) // per address
        assertTrue(t.shouldReport("A", data, 1_000))
        assertFalse(t.shouldReport("A", data, 1_500))
        assertTrue(t.shouldReport("A", data, 2_000))
    }

    @Test
    fun changedServiceDataIsReportedAtOnceButMissingDataIsNoChange() {
        val t = DiscoveryThrottle(intervalMs = 1_000)
        assertTrue(t.shouldReport("A", null, 0))
        assertTrue(t.shouldReport("A", byteArrayOf(1), 1)) // data appeared (e.g. the scan response)
        assertFalse(t.shouldReport("A", null, 2)) // a sighting without the scan response
        assertFalse(t.shouldReport("A", byteArrayOf(1), 3))
        assertTrue(t.shouldReport("A", byteArrayOf(2), 4)) // new tags
    }

    @Test
    fun remembersABoundedNumberOfAddresses() {
        val t = DiscoveryThrottle(intervalMs = 1_000, capacity = 3)
        for (i in 0 until 10) assertTrue(t.shouldReport("A$i", null, i.toLong()))
        assertEquals(3, t.size)
        assertFalse(t.shouldReport("A9", null, 20)) // the latest are remembered
        assertTrue(t.shouldReport("A0", null, 20)) // the oldest were forgotten
        t.clear()
        assertEquals(0, t.size)
    }
}
