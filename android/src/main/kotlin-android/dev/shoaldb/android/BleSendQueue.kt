package dev.shoaldb.android

/** What happened when a [BleSendQueue] handed a packet to the OS. */
internal enum class SendAttempt {
    /** The OS took the operation; its completion is reported later through [BleSendQueue.onComplete]. */
    STARTED,

    /** The OS is busy (a write or notification is still outstanding): try the same packet again shortly. */
    BUSY,

    /** The OS refused the packet for another reason: try the same packet again later, with a longer delay. */
    FAILED,
}

/**
 * The outgoing packets of one connection: at most one OS operation outstanding, packets in order, none dropped.
 *
 * Android allows one outstanding GATT operation per `BluetoothGatt` (and a notification must be confirmed by
 * `onNotificationSent` before the next), so the queue hands the OS one packet ([transmit]), waits for
 * [onComplete], reports [onSent] and hands over the next. A packet the OS refuses ([SendAttempt.BUSY] or
 * [SendAttempt.FAILED], or an unsuccessful completion) stays at the head of the queue and is tried again after
 * [scheduleRetry] calls [onRetry] back, with a delay that doubles from [minRetryMs] up to [maxRetryMs]. Nothing is
 * ever dropped until [close].
 *
 * Not thread-safe: every call comes from the radio's single thread. [transmit] may complete synchronously (call
 * [onComplete] before it returns); the queue copes with that.
 *
 * @param transmit starts the OS operation for one packet.
 * @param onSent called once per packet the OS accepted, in order.
 * @param scheduleRetry arranges for [onRetry] to be called after the given delay in milliseconds.
 */
internal class BleSendQueue(
    private val transmit: (ByteArray) -> SendAttempt,
    private val onSent: () -> Unit,
    private val scheduleRetry: (delayMs: Long) -> Unit,
    private val minRetryMs: Long = 5,
    private val maxRetryMs: Long = 1_000,
) {
    private val waiting = ArrayDeque<ByteArray>()
    private var inFlight: ByteArray? = null
    private var retryPending = false
    private var failures = 0
    private var closed = false

    /** Packets not yet reported sent (the one outstanding included). */
    val size: Int
        get() = waiting.size + (if (inFlight != null) 1 else 0)

    /** Whether an OS operation is outstanding. */
    val busy: Boolean
        get() = inFlight != null

    /** Whether a retry is scheduled and not yet run. */
    val retrying: Boolean
        get() = retryPending

    /** Appends a packet and starts sending it if the connection is idle. Ignored after [close]. */
    fun enqueue(packet: ByteArray) {
        if (closed) return
        waiting.addLast(packet)
        pump()
    }

    /** The outstanding operation completed: reports the packet sent on [success], else queues it again. */
    fun onComplete(success: Boolean) {
        val packet = inFlight ?: return
        inFlight = null
        if (success) {
            failures = 0
            onSent()
            pump()
        } else {
            waiting.addFirst(packet)
            retryLater(SendAttempt.FAILED)
        }
    }

    /** The delay given to [scheduleRetry] has passed: try again. */
    fun onRetry() {
        retryPending = false
        pump()
    }

    /** Forgets every packet; later calls do nothing. */
    fun close() {
        closed = true
        waiting.clear()
        inFlight = null
    }

    private fun pump() {
        while (!closed && inFlight == null && !retryPending) {
            val packet = waiting.removeFirstOrNull() ?: return
            inFlight = packet
            val attempt = try {
                transmit(packet)
            } catch (_: Throwable) {
                SendAttempt.FAILED
            }
            if (attempt == SendAttempt.STARTED) return
            if (inFlight === packet) {
                inFlight = null
                if (!closed) waiting.addFirst(packet)
            }
            retryLater(attempt)
            return
        }
    }

    private fun retryLater(attempt: SendAttempt) {
        if (closed || retryPending) return
        retryPending = true
        // BUSY clears as soon as the stack drains; FAILED (a refused operation) backs off faster.
        val step = if (attempt == SendAttempt.BUSY) failures else failures + 2
        failures++
        val delay = (minRetryMs shl step.coerceAtMost(20)).coerceAtMost(maxRetryMs)
        scheduleRetry(delay)
    }
}
