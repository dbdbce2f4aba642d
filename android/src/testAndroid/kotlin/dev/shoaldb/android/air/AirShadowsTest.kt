package dev.shoaldb.android.air

import android.bluetooth.BluetoothDevice
import android.bluetooth.BluetoothGatt
import android.bluetooth.BluetoothGattCallback
import android.bluetooth.BluetoothManager
import android.bluetooth.le.ScanCallback
import android.bluetooth.le.ScanFilter
import android.bluetooth.le.ScanSettings
import android.os.Build
import android.os.ParcelUuid
import dev.shoaldb.BluetoothChannel
import dev.shoaldb.android.AndroidBluetoothRadio
import dev.shoaldb.android.ExecutorLoop
import dev.shoaldb.android.RecordingSink
import dev.shoaldb.android.TEST_UUIDS
import dev.shoaldb.android.bytes
import dev.shoaldb.android.hex
import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonObject
import org.junit.After
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Before
import org.junit.Test
import org.junit.runner.RunWith
import org.robolectric.RobolectricTestRunner
import org.robolectric.RuntimeEnvironment
import org.robolectric.annotation.Config
import java.io.BufferedReader
import java.io.Closeable
import java.io.InputStreamReader
import java.io.OutputStream
import java.net.InetAddress
import java.net.ServerSocket
import java.net.Socket
import java.util.Base64
import java.util.concurrent.CopyOnWriteArrayList
import java.util.concurrent.LinkedBlockingQueue
import java.util.concurrent.TimeUnit

/** How long a test waits for what the phone's threads do before it gives up (not a timing assertion). */
private const val PATIENCE_MS = 15_000L

/**
 * The air's side of one phone, played by a test: accepts the phone's connection, welcomes it, and lets the test read
 * what the phone says ([expect]) and answer ([send]).
 */
internal class ScriptedAir(private val window: Int) : Closeable {
    private val server = ServerSocket(0, 1, InetAddress.getLoopbackAddress())
    private val inbox = LinkedBlockingQueue<AirMessage>()
    private val connected = LinkedBlockingQueue<OutputStream>()

    @Volatile
    private var socket: Socket? = null
    private val output: OutputStream by lazy { connected.poll(PATIENCE_MS, TimeUnit.MILLISECONDS) ?: throw AssertionError("no phone connected") }

    /** The address the phone dials. */
    val address = "127.0.0.1:${server.localPort}"

    init {
        Thread({
            val s = server.accept()
            socket = s
            val input = BufferedReader(InputStreamReader(s.getInputStream(), Charsets.UTF_8))
            val hello = AirMessage(Json.parseToJsonElement(input.readLine()) as JsonObject)
            check(hello.op == "hello" && hello.string("platform") == "android" && hello.int("mtu") == 517) { "hello: $hello" }
            connected.put(s.getOutputStream())
            send("welcome", "address" to "02:00:00:00:00:01", "window" to window)
            while (true) {
                val line = try {
                    input.readLine()
                } catch (_: Exception) {
                    null
                } ?: break
                inbox.put(AirMessage(Json.parseToJsonElement(line) as JsonObject))
            }
        }, "scripted air").apply {
            isDaemon = true
            start()
        }
    }

    /** Says something to the phone. */
    fun send(op: String, vararg fields: Pair<String, Any?>) {
        val line = air(op, *fields).fields.toString() + "\n"
        synchronized(this) {
            output.write(line.toByteArray(Charsets.UTF_8))
            output.flush()
        }
    }

    /** The next thing the phone says, which must be [op]. */
    fun expect(op: String): AirMessage {
        val m = inbox.poll(PATIENCE_MS, TimeUnit.MILLISECONDS) ?: throw AssertionError("the phone did not send $op")
        assertEquals("the phone's next message: $m", op, m.op)
        return m
    }

    /** Whether the phone has said nothing not yet read. */
    fun quiet(): Boolean = inbox.isEmpty()

    override fun close() {
        try {
            socket?.close()
        } catch (_: Exception) {
        }
        server.close()
    }
}

/** Waits until [condition] holds (the radio and the phone's stack run on their own threads); fails after a while. */
internal fun eventually(what: String, condition: () -> Boolean) {
    val deadline = System.nanoTime() + PATIENCE_MS * 1_000_000
    while (!condition()) {
        if (System.nanoTime() > deadline) fail("never happened: $what")
        Thread.sleep(5)
    }
}

internal fun b64(hex: String): String = Base64.getEncoder().encodeToString(bytes(hex))

/**
 * The air's shadows (this package) under the shipped radio, against an air played by the test (no air server): what
 * the radio makes the phone say, and what it makes of the air's answers. Run on each SDK by the classes below.
 */
abstract class AirShadowsTestBase : OnTheAir() {
    /** Whether the radio uses L2CAP here (API 29+). */
    internal val l2cap = Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q

    internal val service = TEST_UUIDS.service.toString()
    internal val rx = TEST_UUIDS.rx.toString()
    internal val tx = TEST_UUIDS.tx.toString()
    internal val psm = TEST_UUIDS.psm.toString()
    internal val tags = "0102030405060708a1a2a3a4"
    internal val peer = "02:00:00:00:00:09"

    internal lateinit var air: ScriptedAir
    internal lateinit var stack: AirStack
    internal lateinit var sink: RecordingSink
    internal lateinit var radio: AndroidBluetoothRadio

    @Before
    fun joinTheAir() {
        air = ScriptedAir(window = 2)
        stack = joinAirAsAndroidPhone(air.address, "T1")
        sink = RecordingSink()
        radio = AndroidBluetoothRadio(RuntimeEnvironment.getApplication(), true, { TEST_UUIDS }, { ExecutorLoop("Shoal BLE test") })
        radio.startWith(sink)
    }

    @After
    fun leaveTheAir() {
        radio.stop()
        stack.leave()
        air.close()
    }

    internal fun events(prefix: String) = sink.events.filter { it.startsWith(prefix) }

    /** The Shoal service as the air describes it (`add_service`, `services`). */
    private fun shoalService() = mapOf(
        "uuid" to service,
        "chars" to listOf(
            mapOf("uuid" to rx, "props" to listOf("write_no_response")),
            mapOf("uuid" to tx, "props" to listOf("notify")),
            mapOf("uuid" to psm, "props" to listOf("read")),
        ),
    )

    /**
     * Plays the peripheral's side of a dial over [link] up to the PSM read, answered with [psmValue] (hex); before
     * API 29 the radio reads no PSM.
     */
    internal fun dialUpToThePsm(link: Int, psmValue: String) {
        radio.connect(peer)
        val connect = air.expect("connect")
        assertEquals(peer, connect.string("peer"))
        assertEquals(30_000, connect.int("timeout_ms")) // a direct connection, as Android's
        air.send("connected", "ref" to connect.int("ref"), "link" to link, "mtu" to 23, "window" to 2)
        assertEquals(517, air.expect("exchange_mtu").int("mtu"))
        air.send("mtu", "link" to link, "mtu" to 185)
        assertEquals(link, air.expect("discover").int("link"))
        air.send("services", "link" to link, "services" to listOf(shoalService()))
        if (!l2cap) return
        assertEquals(psm, air.expect("read").string("char"))
        air.send("read_result", "link" to link, "char" to psm, "status" to 0, "value" to b64(psmValue))
    }

    @Test
    fun peripheralAdvertisesServesGattAndNotifies() {
        radio.startAdvertising(bytes(tags))
        assertEquals(jsonOf(shoalService()), air.expect("add_service").fields["service"])
        air.send("service_added", "uuid" to service, "ok" to true)
        if (l2cap) {
            air.expect("l2cap_listen")
            air.send("l2cap_listening", "psm" to 0x80)
        }
        val advertise = air.expect("advertise")
        assertEquals(listOf(service), advertise.strings("services"))
        assertEquals(tags, advertise.byteMap("service_data")[service]!!.hex())
        air.send("advertising", "ok" to true)

        // A central reads the PSM and subscribes to TX: the connection is reported.
        air.send("incoming", "link" to 3, "peer" to peer, "mtu" to 23, "window" to 8)
        air.send("mtu", "link" to 3, "mtu" to 185)
        air.send("read_request", "link" to 3, "req" to 5, "char" to psm, "offset" to 0)
        val psmAnswer = air.expect("respond")
        assertEquals(listOf(5, 0), listOf(psmAnswer.int("req"), psmAnswer.int("status")))
        assertEquals(if (l2cap) "8000" else "0000", psmAnswer.bytes("value")!!.hex())
        air.send("descriptor_write_request", "link" to 3, "req" to 6, "char" to tx, "descriptor" to "2902", "value" to b64("0100"))
        val subscribed = air.expect("respond")
        assertEquals(listOf(6, 0), listOf(subscribed.int("req"), subscribed.int("status")))
        eventually("the central is reported") { events("connected").size == 1 }
        val conn = sink.connections.single()
        assertEquals("connected $conn $peer peripheral ${BluetoothChannel.Gatt(185u)}", sink.events.single())

        // Writes without response in, notifications out (one at a time: the next once the first was sent).
        air.send("written", "link" to 3, "char" to rx, "value" to b64("0405"))
        eventually("the write arrives") { sink.received.size == 1 }
        assertEquals("0405", sink.received.single().second.hex())
        radio.send(conn.toULong(), bytes("11"))
        radio.send(conn.toULong(), bytes("22"))
        for (packet in listOf("11", "22")) {
            val notify = air.expect("notify")
            assertEquals(listOf(3, tx, packet), listOf(notify.int("link"), notify.string("char"), notify.bytes("value")!!.hex()))
        }
        eventually("both notifications are sent") { events("sent").size == 2 }

        air.send("disconnected", "link" to 3, "status" to 19)
        eventually("the central is gone") { events("disconnected").isNotEmpty() }
        assertEquals("disconnected $conn", sink.events.last())

        // A channel to the listener's PSM is a connection too.
        if (!l2cap) return
        air.send("l2cap_incoming", "chan" to 9, "peer" to "02:00:00:00:00:0B", "psm" to 0x80)
        eventually("the channel is reported") { events("connected").size == 2 }
        val channel = sink.connections.last()
        assertEquals("connected $channel 02:00:00:00:00:0B peripheral ${BluetoothChannel.L2cap(65535u)}", sink.events.last())
        radio.send(channel.toULong(), bytes("3344"))
        val data = air.expect("data")
        assertEquals(listOf(9, "3344"), listOf(data.int("chan"), data.bytes("bytes")!!.hex()))
        air.send("closed", "chan" to 9)
        eventually("the channel is gone") { sink.events.last() == "disconnected $channel" }
    }

    @Test
    fun scansForTheServiceAndReportsWhatMatches() {
        radio.startScanning()
        val scan = air.expect("scan")
        assertEquals(listOf(service), scan.strings("services"))
        assertEquals(true, scan.bool("duplicates"))
        val battery = "0000180f-0000-1000-8000-00805f9b34fb"
        air.send("seen", "peer" to "02:00:00:00:00:0B", "services" to listOf(battery), "service_data" to emptyMap<String, String>(), "rssi" to -60)
        air.send(
            "seen",
            "peer" to peer,
            "services" to listOf(service.uppercase()),
            "service_data" to mapOf(service to b64(tags)),
            "name" to null,
            "rssi" to -60,
        )
        eventually("the sighting is reported") { sink.events.isNotEmpty() }
        assertEquals(listOf("discovered $peer $tags"), sink.events) // the battery service's phone is filtered out
    }

    @Test
    fun centralConnectsOverGattAndWritesWithinTheWindow() {
        val link = 1
        dialUpToThePsm(link, psmValue = "0000") // no L2CAP: GATT
        val subscribe = air.expect("write_descriptor")
        assertEquals(listOf(tx, "2902", "0100"), listOf(subscribe.string("char"), subscribe.string("descriptor"), subscribe.bytes("value")!!.hex()))
        air.send("descriptor_written", "link" to link, "char" to tx, "descriptor" to "2902", "status" to 0)
        eventually("the connection is reported") { events("connected").size == 1 }
        val conn = sink.connections.single()
        assertEquals("connected $conn $peer central ${BluetoothChannel.Gatt(185u)}", sink.events.single())

        air.send("notified", "link" to link, "char" to tx, "value" to b64("010203"))
        eventually("the notification arrives") { sink.received.size == 1 }
        assertEquals("010203", sink.received.single().second.hex())

        // The link's window is 2: two writes go out, the third waits in the stack until a `delivered` frees a place.
        for (packet in listOf("aa", "bb", "cc")) radio.send(conn.toULong(), bytes(packet))
        assertEquals("aa", air.expect("write").bytes("value")!!.hex())
        assertEquals("bb", air.expect("write").bytes("value")!!.hex())
        eventually("the third write waits for room") { synchronized(stack.lock) { stack.links[link]?.waiting?.size == 1 } }
        assertTrue(air.quiet())
        assertEquals(2, events("sent").size)
        air.send("delivered", "link" to link, "dir" to "write")
        val third = air.expect("write")
        assertEquals(listOf(rx, "cc"), listOf(third.string("char"), third.bytes("value")!!.hex()))
        eventually("the third write is sent") { events("sent").size == 3 }

        air.send("disconnected", "link" to link, "status" to 8)
        eventually("the connection is lost") { events("disconnected").isNotEmpty() }
        assertEquals("disconnected $conn", sink.events.last())
    }

    @Test
    fun servicesChangedReachesTheClientFromApi31() {
        val calls = CopyOnWriteArrayList<String>()
        val callback = object : BluetoothGattCallback() {
            override fun onConnectionStateChange(gatt: BluetoothGatt?, status: Int, newState: Int) {
                calls.add("state $status $newState")
            }

            override fun onServicesDiscovered(gatt: BluetoothGatt?, status: Int) {
                calls.add("discovered $status")
            }

            override fun onMtuChanged(gatt: BluetoothGatt?, mtu: Int, status: Int) {
                calls.add("mtu $mtu")
            }

            override fun onServiceChanged(gatt: BluetoothGatt) { // API 31+: never called before
                calls.add("changed")
            }
        }
        val gatt = stack.device(peer).connectGatt(RuntimeEnvironment.getApplication(), false, callback, BluetoothDevice.TRANSPORT_LE)
        air.send("connected", "ref" to air.expect("connect").int("ref"), "link" to 4, "mtu" to 23, "window" to 2)
        eventually("the link is up") { calls.size == 1 }
        assertTrue(gatt.discoverServices())
        air.expect("discover")
        air.send("services", "link" to 4, "services" to listOf(shoalService()))
        eventually("the services are discovered") { calls.size == 2 }

        air.send("services_changed", "link" to 4)
        air.send("mtu", "link" to 4, "mtu" to 100) // after it, in order
        eventually("the MTU arrives") { calls.lastOrNull() == "mtu 100" }
        val changed = if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.S) listOf("changed") else emptyList()
        assertEquals(listOf("state 0 2", "discovered 0") + changed + "mtu 100", calls)
        // What the last discovery found stays until the app discovers again.
        assertEquals(listOf(TEST_UUIDS.service), gatt.services.map { it.uuid })
        assertTrue(gatt.discoverServices())
        air.expect("discover")
        air.send("services", "link" to 4, "services" to emptyList<Any>())
        eventually("the services are discovered again") { calls.last() == "discovered 0" }
        assertEquals(emptyList<Any>(), gatt.services)
        gatt.close()
        assertEquals(4, air.expect("disconnect").int("link"))
    }

    @Test
    fun theRadioLosesACentralLinkWhosePeersServicesChange() {
        val link = 5
        dialUpToThePsm(link, psmValue = "0000") // no L2CAP: GATT
        air.expect("write_descriptor")
        air.send("descriptor_written", "link" to link, "char" to tx, "descriptor" to "2902", "status" to 0)
        eventually("the connection is reported") { events("connected").size == 1 }
        val conn = sink.connections.single()

        air.send("services_changed", "link" to link)
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.S) {
            assertEquals(link, air.expect("disconnect").int("link"))
            eventually("the connection is lost") { events("disconnected").isNotEmpty() }
            assertEquals("disconnected $conn", sink.events.last())
        } else {
            // Android 11 and older do not tell the app: the link goes on.
            air.send("notified", "link" to link, "char" to tx, "value" to b64("0102"))
            eventually("the notification arrives") { sink.received.size == 1 }
            assertEquals("received $conn 0102", sink.events.last())
            assertTrue(air.quiet())
        }
    }

    @Test
    fun aSixthScanStartWithin30SecondsIsIgnored() {
        val scanner = RuntimeEnvironment.getApplication().getSystemService(BluetoothManager::class.java).adapter.bluetoothLeScanner
        val filters = listOf(ScanFilter.Builder().setServiceUuid(ParcelUuid(TEST_UUIDS.service)).build())
        val settings = ScanSettings.Builder().build()
        repeat(5) {
            val cb = object : ScanCallback() {}
            scanner.startScan(filters, settings, cb)
            air.expect("scan")
            scanner.stopScan(cb)
            air.expect("stop_scan")
        }
        val ignored = object : ScanCallback() {}
        scanner.startScan(filters, settings, ignored) // Android ignores it, silently: the air hears nothing of it
        scanner.stopScan(ignored)
        stack.send("marker")
        air.expect("marker")
    }
}

/** On Android 14 (API 34): the API 33 calls, and L2CAP channels where the peer publishes a PSM. */
@RunWith(RobolectricTestRunner::class)
@Config(sdk = [34])
class AirShadowsTest : AirShadowsTestBase() {
    @Test
    fun centralOpensTheL2capChannelThePeerPublishes() {
        dialUpToThePsm(link = 2, psmValue = "8100")
        val open = air.expect("l2cap_open")
        assertEquals(listOf(peer, 0x81), listOf(open.string("peer"), open.int("psm")))
        air.send("l2cap_opened", "ref" to open.int("ref"), "chan" to 12)
        eventually("the channel is reported") { events("connected").size == 1 }
        val conn = sink.connections.single()
        assertEquals("connected $conn $peer central ${BluetoothChannel.L2cap(65535u)}", sink.events.single())

        air.send("data", "chan" to 12, "bytes" to b64("0a0b0c"))
        eventually("the bytes arrive") { sink.received.size == 1 }
        assertEquals("0a0b0c", sink.received.single().second.hex())
        radio.send(conn.toULong(), bytes("0d0e"))
        val data = air.expect("data")
        assertEquals(listOf(12, "0d0e"), listOf(data.int("chan"), data.bytes("bytes")!!.hex()))
        eventually("the write is sent") { events("sent").size == 1 }

        air.send("closed", "chan" to 12)
        eventually("the channel is gone") { events("disconnected").isNotEmpty() }
    }
}

/** The same on Android 9 (API 28): GATT only, through the pre-API 33 calls. */
@RunWith(RobolectricTestRunner::class)
@Config(sdk = [28])
class AirShadowsApi28Test : AirShadowsTestBase()
