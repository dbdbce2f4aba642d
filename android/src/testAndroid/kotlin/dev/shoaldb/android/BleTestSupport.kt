package dev.shoaldb.android

import android.os.Looper
import dev.shoaldb.BluetoothChannel
import org.junit.Assert.fail
import org.robolectric.Shadows.shadowOf
import java.util.PriorityQueue
import java.util.UUID
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit

/** The UUIDs the tests use (the same as the core's; [UuidsTest] checks them against the native library). */
internal val TEST_UUIDS = ShoalGattUuids(
    service = UUID.fromString("8f4c0001-5d2a-4b8e-9c31-53484f414c00"),
    rx = UUID.fromString("8f4c0002-5d2a-4b8e-9c31-53484f414c00"),
    tx = UUID.fromString("8f4c0003-5d2a-4b8e-9c31-53484f414c00"),
    psm = UUID.fromString("8f4c0004-5d2a-4b8e-9c31-53484f414c00"),
)

/**
 * A [RadioLoop] run by the test thread: posted tasks wait in a queue until [runAll] (or [runUntil], which also
 * waits for tasks posted by the radio's L2CAP threads), and time only moves with [advance]. A task that throws is
 * recorded in [errors] (the production loop would log it): tests check that none did.
 */
internal class TestLoop : RadioLoop {
    private class Timer(val at: Long, val seq: Long, val task: () -> Unit) {
        @Volatile var cancelled = false
    }

    private val tasks = LinkedBlockingQueue<() -> Unit>()
    private val timers = PriorityQueue<Timer>(compareBy<Timer>({ it.at }, { it.seq }))
    private var seq = 0L
    @Volatile var now = 0L
        private set
    @Volatile var isShutdown = false
        private set
    val errors = CopyOnWriteArrayList<Throwable>()

    override fun post(task: () -> Unit): Boolean {
        if (isShutdown) return false
        tasks.add(task)
        return true
    }

    override fun schedule(delayMs: Long, task: () -> Unit): Cancellable {
        val timer = synchronized(timers) { Timer(now + delayMs, seq++, task).also { timers.add(it) } }
        return Cancellable { timer.cancelled = true }
    }

    override fun nowMs(): Long = now

    override fun shutdown() {
        isShutdown = true
        synchronized(timers) { timers.clear() }
    }

    /** Timers scheduled and not cancelled. */
    val pendingTimers: Int
        get() = synchronized(timers) { timers.count { !it.cancelled } }

    private fun run(task: () -> Unit) {
        try {
            task()
        } catch (t: Throwable) {
            errors.add(t)
        }
    }

    /** Runs every queued task, and those they post. */
    fun runAll() {
        while (true) run(tasks.poll() ?: return)
    }

    /** Moves time forward by [ms], running the timers that fall due (and what they post) in order. */
    fun advance(ms: Long) {
        val end = now + ms
        while (true) {
            runAll()
            val next = synchronized(timers) {
                val head = timers.peek()
                if (head != null && head.at <= end) timers.poll() else null
            } ?: break
            now = maxOf(now, next.at)
            if (!next.cancelled) run(next.task)
        }
        now = end
        runAll()
    }

    /** Runs tasks (waiting for other threads to post more) until [condition] holds; fails after [timeoutMs]. */
    fun runUntil(timeoutMs: Long = 15_000, condition: () -> Boolean) {
        val deadline = System.nanoTime() + timeoutMs * 1_000_000
        while (true) {
            runAll()
            if (condition()) return
            if (System.nanoTime() > deadline) fail("timed out waiting")
            tasks.poll(10, TimeUnit.MILLISECONDS)?.let { run(it) }
        }
    }
}

/** What the radio reported, in order, as readable strings. */
internal class RecordingSink : RadioSink {
    val events = CopyOnWriteArrayList<String>()
    val received = CopyOnWriteArrayList<Pair<Long, ByteArray>>()
    val connections = CopyOnWriteArrayList<Long>()

    override fun discovered(address: String, serviceData: ByteArray?) {
        events.add("discovered $address ${serviceData?.hex()}")
    }

    override fun connected(connection: Long, address: String, central: Boolean, channel: BluetoothChannel) {
        connections.add(connection)
        events.add("connected $connection $address ${if (central) "central" else "peripheral"} $channel")
    }

    override fun mtuChanged(connection: Long, mtu: Int) {
        events.add("mtu $connection $mtu")
    }

    override fun received(connection: Long, packet: ByteArray) {
        received.add(connection to packet)
        events.add("received $connection ${packet.hex()}")
    }

    override fun sent(connection: Long) {
        events.add("sent $connection")
    }

    override fun disconnected(connection: Long) {
        events.add("disconnected $connection")
    }

    override fun connectFailed(address: String) {
        events.add("connectFailed $address")
    }

    fun count(prefix: String) = events.count { it.startsWith(prefix) }

    fun clear() {
        events.clear()
        received.clear()
    }
}

/** Lower-case hex of the bytes. */
fun ByteArray.hex(): String = joinToString("") { "%02x".format(it) }

/** Bytes from hex. */
fun bytes(hex: String): ByteArray = ByteArray(hex.length / 2) { hex.substring(2 * it, 2 * it + 2).toInt(16).toByte() }

/** Runs the main looper (where Android posts advertiser and broadcast callbacks) and the radio's loop until quiet. */
internal fun settle(loop: TestLoop) {
    repeat(20) {
        shadowOf(Looper.getMainLooper()).idle()
        loop.runAll()
    }
}
