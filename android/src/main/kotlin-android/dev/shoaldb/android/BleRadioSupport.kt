package dev.shoaldb.android

import android.util.Log
import dev.shoaldb.BluetoothChannel
import dev.shoaldb.BluetoothEventsInterface
import java.io.Closeable
import java.util.concurrent.Executors
import java.util.concurrent.RejectedExecutionException
import java.util.concurrent.ScheduledThreadPoolExecutor
import java.util.concurrent.ThreadFactory
import java.util.concurrent.TimeUnit
import java.util.concurrent.atomic.AtomicInteger

/** The Logcat tag of the Bluetooth radio. */
internal const val BLE_TAG = "ShoalBLE"

/** Logs without ever throwing (Logcat is always there on Android; this also holds under test runners). */
internal fun bleLog(priority: Int, message: String, error: Throwable? = null) {
    try {
        val text = if (error == null) message else "$message: $error"
        Log.println(priority, BLE_TAG, text)
    } catch (_: Throwable) {
    }
}

/**
 * Where [AndroidBluetoothRadio] reports what happens: the calls of `dev.shoaldb.BluetoothEvents`, with Kotlin's
 * signed types. In production [EventsSink] forwards them to the core; tests record them.
 */
internal interface RadioSink {
    fun discovered(address: String, serviceData: ByteArray?)
    fun connected(connection: Long, address: String, central: Boolean, channel: BluetoothChannel)
    fun mtuChanged(connection: Long, mtu: Int)
    fun received(connection: Long, packet: ByteArray)
    fun sent(connection: Long)
    fun disconnected(connection: Long)
    fun connectFailed(address: String)
}

/** A [RadioSink] over the core's `BluetoothEvents` (or any implementation of its interface). */
internal class EventsSink(private val events: BluetoothEventsInterface) : RadioSink {
    override fun discovered(address: String, serviceData: ByteArray?) = events.discovered(address, serviceData)

    override fun connected(connection: Long, address: String, central: Boolean, channel: BluetoothChannel) =
        events.connected(connection.toULong(), address, central, channel)

    override fun mtuChanged(connection: Long, mtu: Int) =
        events.mtuChanged(connection.toULong(), mtu.coerceIn(0, 0xFFFF).toUShort())

    override fun received(connection: Long, packet: ByteArray) = events.received(connection.toULong(), packet)

    override fun sent(connection: Long) = events.sent(connection.toULong())

    override fun disconnected(connection: Long) = events.disconnected(connection.toULong())

    override fun connectFailed(address: String) = events.connectFailed(address)
}

/** Forwards to [inner] while [enabled]; logs and swallows anything it throws. */
internal class SafeSink(private val inner: RadioSink, private val enabled: () -> Boolean) : RadioSink {
    private inline fun report(what: String, body: () -> Unit) {
        if (!enabled()) return
        try {
            body()
        } catch (t: Throwable) {
            bleLog(Log.WARN, "reporting $what failed", t)
        }
    }

    override fun discovered(address: String, serviceData: ByteArray?) =
        report("discovered") { inner.discovered(address, serviceData) }

    override fun connected(connection: Long, address: String, central: Boolean, channel: BluetoothChannel) =
        report("connected") { inner.connected(connection, address, central, channel) }

    override fun mtuChanged(connection: Long, mtu: Int) = report("mtuChanged") { inner.mtuChanged(connection, mtu) }

    override fun received(connection: Long, packet: ByteArray) =
        report("received") { inner.received(connection, packet) }

    override fun sent(connection: Long) = report("sent") { inner.sent(connection) }

    override fun disconnected(connection: Long) = report("disconnected") { inner.disconnected(connection) }

    override fun connectFailed(address: String) = report("connectFailed") { inner.connectFailed(address) }
}

/** A scheduled task that can be called off. */
internal fun interface Cancellable {
    fun cancel()
}

/**
 * The radio's single thread: every piece of radio state is touched only by tasks run here, one at a time, so no
 * locks are needed. Binder-thread callbacks, the public methods and the L2CAP threads only [post].
 */
internal interface RadioLoop {
    /**
     * Runs [task] on the loop's thread, after the tasks already posted. Never throws; after [shutdown] the task is
     * dropped and `false` returned.
     */
    fun post(task: () -> Unit): Boolean

    /** Runs [task] on the loop's thread after [delayMs] milliseconds, unless cancelled first. */
    fun schedule(delayMs: Long, task: () -> Unit): Cancellable

    /** Milliseconds on a monotonic clock. */
    fun nowMs(): Long

    /** Runs the tasks already posted, then ends the thread; scheduled tasks are dropped. */
    fun shutdown()
}

/** The production [RadioLoop]: one daemon thread named [name]. */
internal class ExecutorLoop(name: String) : RadioLoop {
    private val executor = ScheduledThreadPoolExecutor(1, namedThreads(name)).apply {
        removeOnCancelPolicy = true
        executeExistingDelayedTasksAfterShutdownPolicy = false
        continueExistingPeriodicTasksAfterShutdownPolicy = false
    }

    private fun guarded(task: () -> Unit) = Runnable {
        try {
            task()
        } catch (t: Throwable) {
            bleLog(Log.ERROR, "radio task failed", t)
        }
    }

    override fun post(task: () -> Unit): Boolean = try {
        executor.execute(guarded(task))
        true
    } catch (_: RejectedExecutionException) {
        false // shut down: the radio has stopped
    }

    override fun schedule(delayMs: Long, task: () -> Unit): Cancellable = try {
        val future = executor.schedule(guarded(task), delayMs, TimeUnit.MILLISECONDS)
        Cancellable { future.cancel(false) }
    } catch (_: RejectedExecutionException) {
        Cancellable { }
    }

    override fun nowMs(): Long = System.nanoTime() / 1_000_000

    override fun shutdown() = executor.shutdown()
}

/** A factory of daemon threads named `name`, `name 2`, ... */
internal fun namedThreads(name: String): ThreadFactory {
    val count = AtomicInteger()
    val inner = Executors.defaultThreadFactory()
    return ThreadFactory { runnable ->
        inner.newThread(runnable).apply {
            val n = count.incrementAndGet()
            this.name = if (n == 1) name else "$name $n"
            isDaemon = true
        }
    }
}

/** Starts a daemon thread running [body]; anything it throws is logged. */
internal fun startDaemon(name: String, body: () -> Unit): Thread = Thread({
    try {
        body()
    } catch (t: Throwable) {
        bleLog(Log.WARN, "$name failed", t)
    }
}, name).apply {
    isDaemon = true
    start()
}

/** Closes [c], ignoring what it throws. */
internal fun closeQuietly(c: Closeable) {
    try {
        c.close()
    } catch (_: Throwable) {
    }
}

/** Runs [body], ignoring what it throws. */
internal inline fun quietly(body: () -> Unit) {
    try {
        body()
    } catch (_: Throwable) {
    }
}
