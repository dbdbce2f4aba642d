// A connection as the session reports it: what every connection has (an id, a send queue), and the L2CAP channel
// both roles use. The GATT connections are with their role: BleGattServer.kt (peripheral), BleCentral.kt (central).
package dev.shoaldb.android

import android.bluetooth.BluetoothSocket
import android.bluetooth.BluetoothStatusCodes
import dev.shoaldb.BluetoothChannel
import dev.shoaldb.android.BleSession.Companion.L2CAP_DEFAULT_MTU
import java.io.IOException
import java.io.InputStream
import java.io.OutputStream
import java.util.concurrent.ExecutorService
import java.util.concurrent.Executors
import java.util.concurrent.RejectedExecutionException

/** A connection of [session], reported from [BleSession.register] on; its packets go out through [queue]. */
internal abstract class Conn(protected val session: BleSession, val address: String, val central: Boolean) {
    val id: Long = session.newConnectionId()
    abstract val channel: BluetoothChannel
    private var retry: Cancellable? = null
    val queue: BleSendQueue = BleSendQueue(
        transmit = { transmit(it) },
        onSent = { session.sink.sent(id) },
        scheduleRetry = { delay ->
            retry = session.loop.schedule(delay) {
                retry = null
                if (session.isLive(this)) queue.onRetry()
            }
        },
    )

    /** Hands one packet to the OS. */
    protected abstract fun transmit(packet: ByteArray): SendAttempt

    /** Closes the connection's OS resources; reports nothing. */
    open fun shutdown() {
        queue.close()
        retry?.cancel()
        retry = null
    }
}

/** A `BluetoothStatusCodes` result of an API 33+ write or notification. */
internal fun statusToAttempt(status: Int): SendAttempt = when (status) {
    BluetoothStatusCodes.SUCCESS -> SendAttempt.STARTED
    BluetoothStatusCodes.ERROR_GATT_WRITE_REQUEST_BUSY -> SendAttempt.BUSY
    else -> SendAttempt.FAILED
}

/**
 * An L2CAP channel, used as a byte stream (the core frames its packets): a reader thread reports what arrives,
 * a writer thread writes one packet at a time and reports it `sent` once written.
 *
 * @param release what else its [shutdown] closes: the GATT client of the dialling side's link (nothing for a
 *   channel the GATT server's listener accepted).
 */
internal class L2capConn(
    session: BleSession,
    val socket: BluetoothSocket,
    address: String,
    central: Boolean,
    private val release: () -> Unit,
) : Conn(session, address, central) {
    private val input: InputStream = socket.inputStream
    private val output: OutputStream = socket.outputStream
    private val writer: ExecutorService = Executors.newSingleThreadExecutor(namedThreads("Shoal BLE L2CAP write"))
    override val channel = BluetoothChannel.L2cap(l2capMtu(socket).toUShort())

    fun startReading() {
        val size = (try {
            socket.maxReceivePacketSize
        } catch (_: Throwable) {
            0
        }).coerceIn(4096, 65536)
        startDaemon("Shoal BLE L2CAP read") {
            val buffer = ByteArray(size)
            while (true) {
                val n = try {
                    input.read(buffer)
                } catch (_: IOException) {
                    -1
                }
                if (n < 0) break
                if (n == 0) continue
                val bytes = buffer.copyOf(n)
                if (!session.loop.post { if (session.isLive(this)) session.sink.received(id, bytes) }) break
            }
            session.loop.post { session.lost(this, "the L2CAP channel closed") }
        }
    }

    override fun transmit(packet: ByteArray): SendAttempt = try {
        writer.execute {
            try {
                output.write(packet)
                output.flush()
                session.loop.post { if (session.isLive(this)) queue.onComplete(true) }
            } catch (e: IOException) {
                session.loop.post { session.lost(this, "L2CAP write failed: $e") }
            }
        }
        SendAttempt.STARTED
    } catch (_: RejectedExecutionException) {
        SendAttempt.FAILED
    }

    override fun shutdown() {
        super.shutdown()
        closeQuietly(socket)
        writer.shutdownNow()
        release()
    }
}

private fun l2capMtu(socket: BluetoothSocket): Int {
    val size = try {
        socket.maxTransmitPacketSize
    } catch (_: Throwable) {
        0
    }
    return if (size >= 20) size.coerceAtMost(0xFFFF) else L2CAP_DEFAULT_MTU
}
