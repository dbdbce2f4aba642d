package dev.shoaldb.android

import android.content.Context
import android.util.Log
import dev.shoaldb.BluetoothEvents
import dev.shoaldb.BluetoothRadio
import java.util.concurrent.atomic.AtomicLong

/**
 * Shoal's Bluetooth LE radio for Android: scans, advertises, connects and moves packets for the Rust core, which
 * owns the whole protocol (whom to dial, fragmentation, flow control, encryption, sync).
 *
 * Give it to a store before starting sync; phones in range then sync with no network at all:
 *
 * ```kotlin
 * if (ShoalBluetoothPermissions.missing(context).isEmpty()) {
 *     store.setBluetooth(AndroidBluetoothRadio(context))
 * }
 * store.startSync()
 * ```
 *
 * What it does, in both roles at once:
 * - **Peripheral**: a GATT server with Shoal's service (RX: write without response; TX: notify; PSM: read),
 *   connectable advertising of the service UUID (the core's service data — device and app tags — goes in the scan
 *   response, since it does not fit next to a 128-bit UUID in 31 bytes) and, on API 29+, an insecure L2CAP
 *   listener whose PSM the PSM characteristic publishes (the core encrypts everything itself). A central is
 *   reported connected once it subscribes to TX, or once it opens the L2CAP channel.
 * - **Central**: a filtered scan for the service UUID (each address reported at most once a second unless its
 *   service data changes); to dial, it connects over LE, asks for the largest MTU (517), discovers the service,
 *   reads the PSM and, on API 29+ when the peer offers one, opens the L2CAP channel; otherwise it subscribes to TX
 *   and uses GATT.
 * - **Packets**: one queue per connection with one OS operation outstanding at a time (a write to RX, a TX
 *   notification or an L2CAP write); each packet is reported `sent` once the OS took it, and a packet the OS
 *   refuses (busy) is retried, never dropped.
 *
 * It follows the adapter: when Bluetooth is switched off, every connection is reported lost; when it comes back,
 * advertising and scanning resume. Missing permissions are logged (Logcat tag `ShoalBLE`) and what they allow is
 * skipped. All work happens on one background thread per run (`Shoal BLE`), plus a reader and a writer thread per
 * L2CAP channel; every method returns at once, and nothing is ever thrown back into the core.
 *
 * Scanning and advertising run at low latency while the app is in the foreground; call [setForeground] with
 * `false` when it goes to the background (for example from `ProcessLifecycleOwner`) to save battery. Sync in the
 * background needs a foreground service (type `connectedDevice`): see the library's README.
 *
 * @param context any context of the app; its application context is kept.
 * @param useL2cap whether to use L2CAP channels where both phones can (API 29+). `false` keeps every connection
 *   on GATT, which is slower but avoids the L2CAP bugs of some devices.
 */
class AndroidBluetoothRadio internal constructor(
    context: Context,
    private val useL2cap: Boolean,
    uuids: () -> ShoalGattUuids,
    private val newLoop: () -> RadioLoop,
    private val scanStarts: ScanStartLog = ScanStartLog(),
) : BluetoothRadio {

    /**
     * A radio for this app.
     *
     * @param context any context of the app; its application context is kept.
     * @param useL2cap whether to use L2CAP channels where both phones can (API 29+); default `true`.
     */
    @JvmOverloads
    constructor(context: Context, useL2cap: Boolean = true) :
        this(context, useL2cap, ShoalGattUuids::fromCore, { ExecutorLoop("Shoal BLE") }, ScanStartLog.app)

    private val context: Context = context.applicationContext ?: context
    private val uuids: ShoalGattUuids by lazy(uuids)
    private val lock = Any()
    private val connectionIds = AtomicLong()

    @Volatile
    private var session: BleSession? = null

    @Volatile
    private var foreground = true

    /**
     * Whether the app is in the foreground: `true` (the default) scans and advertises at low latency, `false` at
     * balanced power. Takes effect at once if sync is running, else when it starts. Each change restarts the scan,
     * and Android allows about five scan starts per 30 seconds (the radio waits rather than exceed it), so call this
     * on real foreground/background transitions only.
     *
     * @param foreground whether the app is in the foreground.
     */
    fun setForeground(foreground: Boolean) {
        this.foreground = foreground
        onSession("setForeground") { it.setForeground(foreground) }
    }

    /**
     * Sync starts using the radio: from now on everything is reported to [events]. Called by the core; a second
     * call first stops the current run.
     */
    override fun start(events: BluetoothEvents) {
        guard("start") { startWith(EventsSink(events)) }
    }

    /** Starts a run that reports to [sink] (what [start] does; tests pass their own sink). */
    internal fun startWith(sink: RadioSink): BleSession = synchronized(lock) {
        session?.shutdown()
        val s = BleSession(
            context, uuids, newLoop(), sink, useL2cap, foreground, { connectionIds.incrementAndGet() },
            scanStarts = scanStarts,
        )
        session = s
        s.loop.post { s.open() }
        s
    }

    /** Advertises the Shoal service, with [serviceData] (when not empty) in the scan response. Called by the core. */
    override fun startAdvertising(serviceData: ByteArray) {
        val data = serviceData.copyOf()
        onSession("startAdvertising") { it.startAdvertising(data) }
    }

    /** Scans for the Shoal service and reports each sighting. Called by the core. */
    override fun startScanning() {
        onSession("startScanning") { it.startScanning() }
    }

    /** Dials [address] as central; reports `connected` or `connectFailed`. Called by the core. */
    override fun connect(address: String) {
        onSession("connect") { it.connect(address) }
    }

    /** Gives up dialling [address]; nothing is reported. Called by the core. */
    override fun cancelConnect(address: String) {
        onSession("cancelConnect") { it.cancelConnect(address) }
    }

    /** Closes [connection]; nothing is reported. Called by the core. */
    override fun disconnect(connection: ULong) {
        val id = connection.toLong()
        onSession("disconnect") { it.disconnect(id) }
    }

    /** Queues [packet] on [connection]; `sent` is reported once the OS took it. Called by the core. */
    override fun send(connection: ULong, packet: ByteArray) {
        val id = connection.toLong()
        onSession("send") { it.send(id, packet) }
    }

    /**
     * Sync stops: stops advertising and scanning, closes every connection, the GATT server and the L2CAP listener,
     * ends the radio's threads, and reports nothing more. Called by the core; the radio can be started again.
     */
    override fun stop() {
        guard("stop") {
            synchronized(lock) {
                session?.shutdown()
                session = null
            }
        }
    }

    /** The current run, if started (for tests). */
    internal val sessionForTest: BleSession?
        get() = session

    private inline fun guard(what: String, body: () -> Unit) {
        try {
            body()
        } catch (t: Throwable) {
            bleLog(Log.ERROR, "$what failed", t)
        }
    }

    private inline fun onSession(what: String, crossinline action: (BleSession) -> Unit) {
        guard(what) {
            val s = session
            if (s == null) {
                bleLog(Log.DEBUG, "$what: the radio is not started")
            } else {
                s.loop.post { action(s) }
            }
        }
    }
}
