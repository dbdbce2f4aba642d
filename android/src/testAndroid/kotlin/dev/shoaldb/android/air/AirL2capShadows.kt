// L2CAP channels on the simulated air: Robolectric shadows of BluetoothAdapter.listenUsingInsecureL2capChannel,
// BluetoothServerSocket and BluetoothSocket backed by the phone's AirStack (`l2cap_listen`, `l2cap_open`, `data`,
// `close`).
package dev.shoaldb.android.air

import android.bluetooth.BluetoothAdapter
import android.bluetooth.BluetoothDevice
import android.bluetooth.BluetoothServerSocket
import android.bluetooth.BluetoothSocket
import android.os.Build
import org.robolectric.annotation.Implementation
import org.robolectric.annotation.Implements
import org.robolectric.annotation.RealObject
import org.robolectric.shadow.api.Shadow
import org.robolectric.shadows.ShadowBluetoothAdapter
import org.robolectric.shadows.ShadowBluetoothServerSocket
import org.robolectric.shadows.ShadowBluetoothSocket
import java.io.IOException
import java.io.InputStream
import java.io.OutputStream
import java.util.concurrent.CompletableFuture
import java.util.concurrent.ExecutionException
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit
import java.util.concurrent.TimeoutException

/**
 * The packet size an L2CAP channel reports both ways (`getMaxTransmitPacketSize` / `getMaxReceivePacketSize`): the
 * air has no channel MTU, so the largest an LE credit-based channel has (65535); writes are cut into `data` messages
 * of at most this size (the air takes up to 64 KiB each).
 */
internal const val AIR_L2CAP_MTU = 65535

/** How long `l2cap_listen` and `l2cap_open` may take to be answered. */
private const val L2CAP_ANSWER_TIMEOUT_MS = 30_000L

/**
 * The phone's L2CAP listeners and channels, under the stack's lock. `l2cap_listen` has no reference: the answers
 * (`l2cap_listening`) are matched to the requests in order.
 */
internal class AirL2cap(private val stack: AirStack) {
    private val listening = ArrayDeque<CompletableFuture<Int>>()
    private val listeners = HashMap<Int, AirServerSocketShadow>()
    private val opening = HashMap<Int, AirSocketShadow>()
    private val channels = HashMap<Int, AirSocketShadow>()

    /** Asks the air for a PSM and registers [listener] on it; blocks until the air answers. */
    fun listen(listener: AirServerSocketShadow): Int {
        val answer = CompletableFuture<Int>()
        synchronized(stack.lock) {
            listening.addLast(answer)
            if (!stack.send("l2cap_listen")) throw IOException("Bluetooth is off (the phone left the air)")
        }
        val psm = try {
            answer.get(L2CAP_ANSWER_TIMEOUT_MS, TimeUnit.MILLISECONDS)
        } catch (e: TimeoutException) {
            throw IOException("Error: listening for an L2CAP channel timed out", e)
        }
        synchronized(stack.lock) { listeners[psm] = listener }
        return psm
    }

    fun unlisten(psm: Int) {
        synchronized(stack.lock) {
            if (listeners.remove(psm) != null) stack.send("l2cap_unlisten", "psm" to psm)
        }
    }

    /** Opens a channel for [socket] (its `ref` already set); the future completes with the channel's id. */
    fun open(socket: AirSocketShadow, ref: Int, peer: String, psm: Int) {
        opening[ref] = socket
        stack.send("l2cap_open", "peer" to peer, "psm" to psm, "ref" to ref)
    }

    /** Gives up an open not yet answered. Under the stack's lock. */
    fun abandon(ref: Int) {
        opening.remove(ref)
    }

    /** A channel closed by this end. Under the stack's lock. */
    fun closeChannel(chan: Int) {
        if (channels.remove(chan) != null) stack.send("close", "chan" to chan)
    }

    fun onMessage(m: AirMessage) {
        synchronized(stack.lock) {
            when (m.op) {
                "l2cap_listening" -> listening.removeFirstOrNull()?.complete(m.int("psm") ?: 0)
                "l2cap_opened" -> {
                    val chan = m.int("chan") ?: return
                    val socket = m.int("ref")?.let { opening.remove(it) }
                    if (socket == null) {
                        stack.send("close", "chan" to chan) // given up meanwhile
                        return
                    }
                    channels[chan] = socket
                    socket.onOpened(chan)
                }
                "l2cap_failed" -> m.int("ref")?.let { opening.remove(it) }?.onFailed()
                "l2cap_incoming" -> {
                    val chan = m.int("chan") ?: return
                    val listener = m.int("psm")?.let { listeners[it] }
                    val peer = m.string("peer")
                    if (listener == null || peer == null) {
                        stack.send("close", "chan" to chan)
                        return
                    }
                    val socket = Shadow.newInstanceOf(BluetoothSocket::class.java)
                    val shadow = Shadow.extract<AirSocketShadow>(socket)
                    shadow.onAccepted(stack.device(peer), chan)
                    channels[chan] = shadow
                    if (!listener.offer(socket)) closeChannel(chan)
                }
                "data" -> {
                    val chan = m.int("chan") ?: return
                    val bytes = m.bytes("bytes") ?: return
                    channels[chan]?.onData(bytes)
                }
                "closed" -> m.int("chan")?.let { channels.remove(it) }?.onRemoteClosed()
            }
        }
    }
}

/**
 * `BluetoothAdapter` on the air: Robolectric's adapter (on, with the phone's air address and name set by the phone
 * program), whose `listenUsingInsecureL2capChannel` listens on the air: it blocks until the air gives a PSM, as
 * Android's call blocks until the stack has one.
 */
@Implements(BluetoothAdapter::class)
class AirBluetoothAdapterShadow : ShadowBluetoothAdapter() {
    @field:RealObject
    lateinit var realAdapter: BluetoothAdapter

    @Implementation(minSdk = Build.VERSION_CODES.Q)
    override fun listenUsingInsecureL2capChannel(): BluetoothServerSocket {
        if (!realAdapter.isEnabled) throw IOException("Error: Bluetooth is not enabled")
        val server = super.listenUsingInsecureL2capChannel()
        val shadow = Shadow.extract<AirServerSocketShadow>(server)
        shadow.psm = AirStack.current().l2cap.listen(shadow)
        return server
    }
}

/**
 * An L2CAP listener on the air (`BluetoothServerSocket`): `accept` blocks until a channel to its PSM arrives
 * (`l2cap_incoming`) and returns it connected; `close` stops listening (`l2cap_unlisten`) and makes a blocked
 * `accept` throw, as Android's does; `getPsm` is the air's PSM.
 */
@Implements(BluetoothServerSocket::class)
class AirServerSocketShadow : ShadowBluetoothServerSocket() {
    private object Closed

    private val accepted = LinkedBlockingQueue<Any>()

    @Volatile
    private var closed = false

    /** The PSM the air gave this listener. */
    @Volatile
    internal var psm = 0

    /** A channel arrived: false when the listener is closed (the caller closes the channel). */
    internal fun offer(socket: BluetoothSocket): Boolean {
        if (closed) return false
        accepted.put(socket)
        return true
    }

    @Implementation
    override fun accept(timeout: Int): BluetoothSocket {
        if (closed) throw IOException("socket closed")
        val next = try {
            if (timeout < 0) accepted.take() else accepted.poll(timeout.toLong(), TimeUnit.MILLISECONDS)
        } catch (e: InterruptedException) {
            throw IOException(e)
        } ?: throw IOException("Try again")
        if (next === Closed) {
            accepted.put(Closed)
            throw IOException("socket closed")
        }
        return next as BluetoothSocket
    }

    @Implementation
    override fun close() {
        if (closed) return
        closed = true
        if (psm != 0) AirStack.current().l2cap.unlisten(psm)
        while (true) {
            val waiting = accepted.poll() ?: break
            if (waiting is BluetoothSocket) waiting.close()
        }
        accepted.put(Closed)
    }

    @Implementation(minSdk = Build.VERSION_CODES.Q)
    protected fun getPsm(): Int = psm
}

/**
 * An L2CAP channel on the air (`BluetoothSocket`), as Android's LE connection-oriented channels behave:
 * - `createInsecureL2capChannel` makes it, `connect` opens it (`l2cap_open`) and blocks until the air answers
 *   (`l2cap_opened`, or `l2cap_failed`: IOException); a close from another thread makes a blocked `connect` throw.
 * - Its input stream returns what the other end wrote, at most one `data` message per `read` (as an L2CAP SDU), -1
 *   once the other end closed the channel (`closed`), and throws once this end closed it.
 * - Its output stream sends `data` messages (cut at [AIR_L2CAP_MTU]), and throws once either end closed the channel.
 * - `close` closes the channel (`close`).
 *
 * Not modelled: credits and flow control inside the channel (a write never blocks; the air paces the bytes), the
 * channel closing with the GATT link it was found through (the air keeps channels independent of links), secure
 * (encrypted, bonded) channels.
 */
@Implements(BluetoothSocket::class)
class AirSocketShadow : ShadowBluetoothSocket() {
    private enum class State { NEW, CONNECTING, CONNECTED, CLOSED }

    private val stack: AirStack
        get() = AirStack.current()

    // Under the stack's lock.
    private var state = State.NEW
    private var device: BluetoothDevice? = null
    private var psm = 0
    private var chan = 0
    private var ref = 0
    private var opened: CompletableFuture<Int>? = null
    private var remoteClosed = false

    private val input = ChannelInput()
    private val output = ChannelOutput()

    /** A socket made by `createInsecureL2capChannel`: to [psm] on [device], not yet connected. */
    internal fun prepareOutgoing(device: BluetoothDevice, psm: Int) {
        synchronized(stack.lock) {
            this.device = device
            this.psm = psm
        }
    }

    /** A socket a listener accepted: connected to [device] over [chan]. Under the stack's lock. */
    internal fun onAccepted(device: BluetoothDevice, chan: Int) {
        this.device = device
        this.chan = chan
        state = State.CONNECTED
    }

    /** Under the stack's lock. */
    internal fun onOpened(chan: Int) {
        this.chan = chan
        state = State.CONNECTED
        opened?.complete(chan)
    }

    /** Under the stack's lock. */
    internal fun onFailed() {
        state = State.CLOSED
        opened?.completeExceptionally(IOException("read failed, socket might closed or timeout, read ret: -1"))
    }

    /** Under the stack's lock. */
    internal fun onData(bytes: ByteArray) {
        input.deliver(bytes)
    }

    /** Under the stack's lock. */
    internal fun onRemoteClosed() {
        remoteClosed = true
        input.end()
    }

    @Implementation
    override fun connect() {
        val stack = this.stack
        val answer = CompletableFuture<Int>()
        synchronized(stack.lock) {
            when (state) {
                State.CLOSED -> throw IOException("socket closed")
                State.CONNECTED -> return
                State.CONNECTING -> throw IOException("already connecting")
                State.NEW -> {}
            }
            val peer = device?.address ?: throw IOException("no remote device")
            state = State.CONNECTING
            opened = answer
            ref = stack.newRef()
            stack.l2cap.open(this, ref, peer, psm)
        }
        try {
            answer.get(L2CAP_ANSWER_TIMEOUT_MS, TimeUnit.MILLISECONDS)
        } catch (e: ExecutionException) {
            throw e.cause as? IOException ?: IOException(e.cause)
        } catch (e: TimeoutException) {
            close()
            throw IOException("read failed, socket might closed or timeout, read ret: -1", e)
        } catch (e: InterruptedException) {
            close()
            throw IOException(e)
        }
    }

    @Implementation
    override fun getInputStream(): InputStream = input

    @Implementation
    override fun getOutputStream(): OutputStream = output

    @Implementation
    override fun isConnected(): Boolean = synchronized(stack.lock) { state == State.CONNECTED }

    @Implementation
    override fun close() {
        synchronized(stack.lock) {
            when (state) {
                State.CONNECTING -> {
                    stack.l2cap.abandon(ref)
                    opened?.completeExceptionally(IOException("socket closed"))
                }
                State.CONNECTED -> stack.l2cap.closeChannel(chan)
                else -> {}
            }
            state = State.CLOSED
            input.abort()
        }
    }

    @Implementation
    protected fun getRemoteDevice(): BluetoothDevice? = synchronized(stack.lock) { device }

    @Implementation(minSdk = Build.VERSION_CODES.M)
    protected fun getMaxTransmitPacketSize(): Int = AIR_L2CAP_MTU

    @Implementation(minSdk = Build.VERSION_CODES.M)
    protected fun getMaxReceivePacketSize(): Int = AIR_L2CAP_MTU

    /** What arrived on the channel, one `data` message at a time. */
    private class ChannelInput : InputStream() {
        private object End
        private object Aborted

        private val chunks = LinkedBlockingQueue<Any>()
        private var current: ByteArray? = null
        private var position = 0

        fun deliver(bytes: ByteArray) {
            chunks.put(bytes)
        }

        /** The other end closed the channel: reads return -1 once what arrived is read. */
        fun end() {
            chunks.put(End)
        }

        /** This end closed the channel: reads throw. */
        fun abort() {
            chunks.clear()
            chunks.put(Aborted)
        }

        override fun read(): Int {
            val one = ByteArray(1)
            return if (read(one, 0, 1) < 0) -1 else one[0].toInt() and 0xFF
        }

        @Synchronized
        override fun read(b: ByteArray, off: Int, len: Int): Int {
            if (len == 0) return 0
            while (true) {
                val chunk = current
                if (chunk != null && position < chunk.size) {
                    val n = minOf(len, chunk.size - position)
                    System.arraycopy(chunk, position, b, off, n)
                    position += n
                    return n
                }
                current = null
                val next = try {
                    chunks.take()
                } catch (e: InterruptedException) {
                    throw IOException(e)
                }
                when (next) {
                    End -> {
                        chunks.put(End)
                        return -1
                    }
                    Aborted -> {
                        chunks.put(Aborted)
                        throw IOException("bt socket closed, read return: -1")
                    }
                    else -> {
                        current = next as ByteArray
                        position = 0
                    }
                }
            }
        }

        override fun available(): Int {
            val chunk = current ?: return 0
            return chunk.size - position
        }
    }

    /** Writes go to the other end as `data` messages. */
    private inner class ChannelOutput : OutputStream() {
        override fun write(b: Int) = write(byteArrayOf(b.toByte()), 0, 1)

        override fun write(b: ByteArray, off: Int, len: Int) {
            synchronized(stack.lock) {
                if (state != State.CONNECTED) throw IOException("socket closed")
                if (remoteClosed) throw IOException("Broken pipe")
                var i = off
                while (i < off + len) {
                    val n = minOf(AIR_L2CAP_MTU, off + len - i)
                    stack.send("data", "chan" to chan, "bytes" to b.copyOfRange(i, i + n))
                    i += n
                }
            }
        }
    }
}
