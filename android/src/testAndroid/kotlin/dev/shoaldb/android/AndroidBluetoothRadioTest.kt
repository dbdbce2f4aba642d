package dev.shoaldb.android

import android.Manifest
import android.app.Application
import android.bluetooth.BluetoothAdapter
import android.bluetooth.BluetoothDevice
import android.bluetooth.BluetoothGatt
import android.bluetooth.BluetoothGattCallback
import android.bluetooth.BluetoothGattDescriptor
import android.bluetooth.BluetoothGattServer
import android.bluetooth.BluetoothGattServerCallback
import android.bluetooth.BluetoothGattService
import android.bluetooth.BluetoothManager
import android.bluetooth.BluetoothProfile
import android.bluetooth.BluetoothStatusCodes
import android.bluetooth.le.ScanCallback
import android.bluetooth.le.ScanRecord
import android.bluetooth.le.ScanResult
import android.bluetooth.le.ScanSettings
import android.content.Intent
import android.os.Build
import android.os.ParcelUuid
import dev.shoaldb.BluetoothChannel
import org.junit.After
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNotNull
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Before
import org.junit.Test
import org.junit.runner.RunWith
import org.robolectric.RobolectricTestRunner
import org.robolectric.RuntimeEnvironment
import org.robolectric.Shadows.shadowOf
import org.robolectric.annotation.Config
import org.robolectric.shadow.api.Shadow
import org.robolectric.shadows.ShadowBluetoothGatt
import org.robolectric.shadows.ShadowBluetoothGattServer
import org.robolectric.shadows.ShadowBluetoothSocket
import org.robolectric.shadows.ShadowLog
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.UUID

/**
 * Shared by the radio tests on each SDK: a radio on a [TestLoop], reporting to a [RecordingSink], over Robolectric's
 * Bluetooth shadows (an enabled adapter, every permission granted).
 */
abstract class RadioTestBase {
    internal val app: Application = RuntimeEnvironment.getApplication()
    internal val adapter: BluetoothAdapter
        get() = app.getSystemService(BluetoothManager::class.java).adapter
    internal val loops = mutableListOf<TestLoop>()
    internal val loop: TestLoop
        get() = loops.last()
    internal lateinit var sink: RecordingSink
    internal lateinit var radio: AndroidBluetoothRadio
    internal val session: BleSession
        get() = radio.sessionForTest!!

    internal val tags = bytes("0102030405060708" + "a1a2a3a4")
    internal val peerAddress = "AA:BB:CC:DD:EE:01"
    internal val centralAddress = "11:22:33:44:55:66"

    @Before
    fun setUpRadio() {
        ShadowLog.clear()
        ControlledGattShadow.reset()
        RecordingAdvertiserShadow.started.clear()
        NotifyingGattServerShadow.reset()
        shadowOf(app).grantPermissions(*ShoalBluetoothPermissions.required())
        shadowOf(app).grantPermissions(Manifest.permission.ACCESS_FINE_LOCATION)
        shadowOf(adapter).setEnabled(true)
        sink = RecordingSink()
        radio = AndroidBluetoothRadio(app, useL2cap = true, { TEST_UUIDS }, { TestLoop().also { loops.add(it) } })
        radio.startWith(sink)
        loop.runAll()
    }

    @After
    fun tearDownRadio() {
        radio.stop()
        loops.forEach { settle(it) }
        // The radio's log goes to the test's output file (target/android-test/surefire-reports/*-output.txt).
        println("--- ${this::class.simpleName} log:\n" + logs().joinToString("\n"))
        for (l in loops) {
            if (l.errors.isNotEmpty()) throw AssertionError("a radio task threw", l.errors.first())
        }
    }

    internal fun logs(): List<String> = ShadowLog.getLogsForTag(BLE_TAG).map { it.msg }

    /** Does [action], then runs what it set off: the main looper and every run's loop (old runs close there). */
    internal fun run(action: () -> Unit) {
        action()
        repeat(3) { loops.forEach { settle(it) } }
    }

    // --- central ---

    /** A scan result for [address] advertising the Shoal service, with [serviceData] when given. */
    internal fun scanResult(address: String, serviceData: ByteArray?): ScanResult {
        val uuid = ByteBuffer.allocate(16).order(ByteOrder.LITTLE_ENDIAN)
            .putLong(TEST_UUIDS.service.leastSignificantBits).putLong(TEST_UUIDS.service.mostSignificantBits).array()
        var raw = byteArrayOf(2, 1, 6, 17, 7) + uuid
        if (serviceData != null) raw += byteArrayOf((1 + 16 + serviceData.size).toByte(), 0x21) + uuid + serviceData
        val record = ScanRecord.parseFromBytes(raw)
        @Suppress("DEPRECATION")
        return ScanResult(adapter.getRemoteDevice(address), record, -50, 0L)
    }

    internal fun scanCallback(): ScanCallback = shadowOf(adapter.bluetoothLeScanner).activeScans.single().scanCallback()!!

    /** The service a peer serves, as discovered by a central (PSM characteristic holding [psm]). */
    internal fun peerService(psm: Int = 0): BluetoothGattService = ShoalGattLayout.service(TEST_UUIDS).also {
        @Suppress("DEPRECATION")
        it.getCharacteristic(TEST_UUIDS.psm).value = ShoalGattLayout.psmValue(psm)
    }

    internal fun gattOf(address: String): BluetoothGatt = shadowOf(adapter.getRemoteDevice(address)).bluetoothGatts.last()

    internal fun shadowGatt(gatt: BluetoothGatt): ShadowBluetoothGatt = Shadow.extract(gatt)

    /** Dials [address] and plays the peer's side until the connection is reported; returns its id and GATT. */
    internal fun dial(address: String = peerAddress, psm: Int = 0): Pair<Long, BluetoothGatt> {
        run { radio.connect(address) }
        val gatt = gattOf(address)
        val shadow = shadowGatt(gatt)
        val service = peerService(psm)
        shadow.addDiscoverableService(service)
        shadow.allowCharacteristicNotification(service.getCharacteristic(TEST_UUIDS.tx))
        val before = sink.connections.size
        run { shadow.notifyConnection(address) }
        if (psm != 0 && Build.VERSION.SDK_INT >= Build.VERSION_CODES.Q) loop.runUntil { sink.connections.size > before }
        assertEquals(before + 1, sink.connections.size)
        return sink.connections.last() to gatt
    }

    // --- peripheral ---

    internal fun server(): BluetoothGattServer = session.gattServerForTest!!

    internal fun serverShadow(): ShadowBluetoothGattServer = Shadow.extract(server())

    internal fun serverCallback(): BluetoothGattServerCallback = serverShadow().gattServerCallback

    internal fun serverCharacteristic(uuid: UUID) = server().getService(TEST_UUIDS.service).getCharacteristic(uuid)

    internal fun cccd(): BluetoothGattDescriptor = serverCharacteristic(TEST_UUIDS.tx).getDescriptor(ShoalGattLayout.CCCD)

    /** A central connects to the server, exchanges the MTU and subscribes; returns the reported connection id. */
    internal fun subscribe(address: String = centralAddress, mtu: Int = 185): Pair<Long, BluetoothDevice> {
        val device = adapter.getRemoteDevice(address)
        run { serverShadow().notifyConnection(device) }
        run { serverCallback().onMtuChanged(device, mtu) }
        val before = sink.connections.size
        run {
            serverCallback().onDescriptorWriteRequest(
                device, 7, cccd(), false, true, 0, BluetoothGattDescriptor.ENABLE_NOTIFICATION_VALUE,
            )
        }
        assertEquals(before + 1, sink.connections.size)
        return sink.connections.last() to device
    }
}

@RunWith(RobolectricTestRunner::class)
@Config(sdk = [34])
class AndroidBluetoothRadioTest : RadioTestBase() {

    // ------------------------------------------------------------------------------------------------ scanning

    @Test
    fun scansForTheServiceAndThrottlesSightings() {
        run { radio.startScanning() }
        val scan = shadowOf(adapter.bluetoothLeScanner).activeScans.single()
        assertEquals(ParcelUuid(TEST_UUIDS.service), scan.scanFilters().single().serviceUuid)
        assertEquals(ScanSettings.SCAN_MODE_LOW_LATENCY, scan.scanSettings()!!.scanMode)
        val cb = scan.scanCallback()!!

        run { cb.onScanResult(ScanSettings.CALLBACK_TYPE_ALL_MATCHES, scanResult(peerAddress, tags)) }
        assertEquals(listOf("discovered $peerAddress ${tags.hex()}"), sink.events)
        run { repeat(5) { cb.onScanResult(ScanSettings.CALLBACK_TYPE_ALL_MATCHES, scanResult(peerAddress, tags)) } }
        assertEquals(1, sink.count("discovered"))
        run { cb.onScanResult(ScanSettings.CALLBACK_TYPE_ALL_MATCHES, scanResult("AA:BB:CC:DD:EE:02", null)) }
        assertEquals("discovered AA:BB:CC:DD:EE:02 null", sink.events.last())

        loop.advance(1_000)
        run { cb.onBatchScanResults(mutableListOf(scanResult(peerAddress, tags))) }
        assertEquals(3, sink.count("discovered"))

        // startScanning again while scanning: nothing changes.
        run { radio.startScanning() }
        assertEquals(1, shadowOf(adapter.bluetoothLeScanner).activeScans.size)
    }

    @Test
    fun backgroundScansAtBalancedPowerAndScanStartsAreRateLimited() {
        run { radio.startScanning() }
        run { radio.setForeground(false) }
        var scans = shadowOf(adapter.bluetoothLeScanner).activeScans
        assertEquals(1, scans.size) // the low-latency scan was stopped
        assertEquals(ScanSettings.SCAN_MODE_BALANCED, scans.single().scanSettings()!!.scanMode)
        run { radio.setForeground(true) }
        run { radio.setForeground(false) }
        // Four starts within 30 s: the fifth waits for the window to pass rather than be ignored by Android.
        run { radio.setForeground(true) }
        scans = shadowOf(adapter.bluetoothLeScanner).activeScans
        assertEquals(ScanSettings.SCAN_MODE_BALANCED, scans.single().scanSettings()!!.scanMode)
        loop.advance(30_100)
        scans = shadowOf(adapter.bluetoothLeScanner).activeScans
        assertEquals(ScanSettings.SCAN_MODE_LOW_LATENCY, scans.single().scanSettings()!!.scanMode)
    }

    @Test
    fun scanStartsAreLimitedPerAppAcrossRuns() {
        // Android counts an app's scan starts, not a run's: sync restarted five times within 30 s (a new run each
        // time, as `startSync` after `stopSync` or a store opened again makes) must not start a fifth scan, which
        // Android would ignore without a word (found by the mesh scenarios on the simulated air).
        val starts = ScanStartLog()
        val restarted = AndroidBluetoothRadio(app, useL2cap = true, { TEST_UUIDS }, { TestLoop().also { loops.add(it) } }, starts)
        val scans = { shadowOf(adapter.bluetoothLeScanner).activeScans.size }
        try {
            repeat(4) {
                run { restarted.startWith(RecordingSink()) }
                run { restarted.startScanning() }
                assertEquals(1, scans()) // the previous run's scan stopped, this run's started
            }
            run { restarted.startWith(RecordingSink()) }
            run { restarted.startScanning() }
            assertEquals(0, scans())
            loops.last().advance(30_100)
            assertEquals(1, scans())
        } finally {
            restarted.stop()
        }
    }

    @Test
    fun scanIsRestartedBeforeAndroidDemotesIt() {
        run { radio.startScanning() }
        val first = scanCallback()
        loop.advance(BleSession.SCAN_RESTART_MS)
        val second = scanCallback()
        assertTrue(first !== second)
        // Sightings on the old callback are ignored.
        run { first.onScanResult(ScanSettings.CALLBACK_TYPE_ALL_MATCHES, scanResult(peerAddress, tags)) }
        assertEquals(0, sink.count("discovered"))
    }

    @Test
    fun scanFailureIsRetried() {
        run { radio.startScanning() }
        run { scanCallback().onScanFailed(ScanCallback.SCAN_FAILED_INTERNAL_ERROR) }
        loop.advance(2_000)
        val scans = shadowOf(adapter.bluetoothLeScanner).activeScans
        assertTrue(scans.isNotEmpty())
        assertTrue(logs().any { it.startsWith("scanning failed") })
    }

    // ------------------------------------------------------------------------------------------------ advertising

    @Test
    @Config(shadows = [RecordingAdvertiserShadow::class])
    fun advertisesTheServiceWithServiceDataInTheScanResponseAndServesGatt() {
        run { radio.startAdvertising(tags) }
        val server = server()
        assertEquals(listOf(TEST_UUIDS.service), server.services.map { it.uuid })
        assertNotNull(serverCharacteristic(TEST_UUIDS.rx))
        val advertiser = shadowOf(adapter.bluetoothLeAdvertiser)
        assertEquals(1, advertiser.advertisementRequestCount)
        val (settings, data, response) = RecordingAdvertiserShadow.started.single()
        assertTrue(settings.isConnectable)
        assertEquals(listOf(ParcelUuid(TEST_UUIDS.service)), data.serviceUuids)
        assertTrue(data.serviceData.isEmpty())
        assertArrayEquals(tags, response!!.serviceData[ParcelUuid(TEST_UUIDS.service)])
        assertTrue(logs().toString(), logs().contains("advertising with service data"))

        // The same data again: nothing restarts. New data: the advertisement is replaced.
        run { radio.startAdvertising(tags) }
        assertEquals(1, advertiser.advertisementRequestCount)
        run { radio.startAdvertising(bytes("ffffffffffffffff00000000")) }
        assertEquals(1, advertiser.advertisementRequestCount)
        assertEquals(2, logs().count { it == "advertising with service data" })
    }

    @Test
    @Config(shadows = [RecordingAdvertiserShadow::class])
    fun serviceDataTooLargeIsDroppedFromTheAdvertisement() {
        run { radio.startAdvertising(ByteArray(20) { 7 }) } // 2 + 16 + 20 > 31 bytes: Android refuses it
        assertTrue(logs().toString(), logs().any { it.startsWith("the service data does not fit") })
        assertEquals("advertising", logs().last { it.startsWith("advertising") })
        assertEquals(1, shadowOf(adapter.bluetoothLeAdvertiser).advertisementRequestCount)
        val (first, retry) = RecordingAdvertiserShadow.started.toList()
        assertNotNull(first.third)
        assertNull(retry.third)
        assertEquals(listOf(ParcelUuid(TEST_UUIDS.service)), retry.second.serviceUuids)
    }

    @Test
    @Config(shadows = [RecordingAdvertiserShadow::class])
    fun advertisingWithoutServiceData() {
        run { radio.startAdvertising(ByteArray(0)) }
        assertEquals("advertising", logs().last { it.startsWith("advertising") })
        assertNull(RecordingAdvertiserShadow.started.single().third)
    }

    @Test
    fun psmCharacteristicPublishesTheL2capListener() {
        run { radio.startAdvertising(tags) }
        val listener = session.l2capServerForTest
        assertNotNull(listener) // API 34: an insecure L2CAP listener
        val expected = ShoalGattLayout.psmValue(listener!!.psm.takeIf { it in 1..0xFFFF } ?: 0)
        val device = adapter.getRemoteDevice(centralAddress)
        run { serverCallback().onCharacteristicReadRequest(device, 3, 0, serverCharacteristic(TEST_UUIDS.psm)) }
        assertArrayEquals(expected, serverShadow().responses.last())
        run { serverCallback().onCharacteristicReadRequest(device, 4, 1, serverCharacteristic(TEST_UUIDS.psm)) }
        assertArrayEquals(expected.copyOfRange(1, 2), serverShadow().responses.last())
    }

    // ------------------------------------------------------------------------------------------------ peripheral

    @Test
    @Config(shadows = [NotifyingGattServerShadow::class])
    fun peripheralReportsACentralOnceItSubscribesAndMovesPackets() {
        run { radio.startAdvertising(tags) }
        val device = adapter.getRemoteDevice(centralAddress)
        run { serverShadow().notifyConnection(device) }
        run { serverCallback().onMtuChanged(device, 185) }
        assertEquals(emptyList<String>(), sink.events) // connected, not yet subscribed

        // A write before subscribing is dropped (the central cannot have a link yet).
        run { serverShadow().notifyOnCharacteristicWriteRequest(device, 1, serverCharacteristic(TEST_UUIDS.rx), false, false, 0, bytes("00")) }
        assertEquals(emptyList<String>(), sink.events)

        run {
            serverCallback().onDescriptorWriteRequest(device, 7, cccd(), false, true, 0, BluetoothGattDescriptor.ENABLE_NOTIFICATION_VALUE)
        }
        val conn = sink.connections.single()
        assertEquals(listOf("connected $conn $centralAddress peripheral ${BluetoothChannel.Gatt(185u)}"), sink.events)
        assertArrayEquals(BluetoothGattDescriptor.ENABLE_NOTIFICATION_VALUE, serverShadow().responses.last())

        run { serverShadow().notifyOnCharacteristicWriteRequest(device, 8, serverCharacteristic(TEST_UUIDS.rx), false, false, 0, bytes("0102")) }
        run { serverCallback().onMtuChanged(device, 247) }
        assertEquals(listOf("received $conn 0102", "mtu $conn 247"), sink.events.drop(1))
        sink.clear()

        // Notifications: one outstanding; the next after onNotificationSent; a busy one is retried.
        NotifyingGattServerShadow.answers.addAll(listOf(BluetoothStatusCodes.SUCCESS, BluetoothStatusCodes.ERROR_GATT_WRITE_REQUEST_BUSY))
        run {
            radio.send(conn.toULong(), bytes("aa"))
            radio.send(conn.toULong(), bytes("bb"))
            radio.send(conn.toULong(), bytes("cc"))
        }
        assertEquals(listOf("aa"), NotifyingGattServerShadow.notified.map { it.second.hex() })
        assertEquals(centralAddress, NotifyingGattServerShadow.notified.single().first)
        assertEquals(3, session.queuedForTest(conn))
        run { serverCallback().onNotificationSent(device, BluetoothGatt.GATT_SUCCESS) }
        assertEquals(listOf("sent $conn"), sink.events)
        assertEquals(listOf("aa", "bb"), NotifyingGattServerShadow.notified.map { it.second.hex() }) // bb: busy
        loop.advance(5)
        assertEquals(listOf("aa", "bb", "bb"), NotifyingGattServerShadow.notified.map { it.second.hex() })
        run { serverCallback().onNotificationSent(device, BluetoothGatt.GATT_SUCCESS) }
        run { serverCallback().onNotificationSent(device, BluetoothGatt.GATT_SUCCESS) }
        assertEquals(listOf("aa", "bb", "bb", "cc"), NotifyingGattServerShadow.notified.map { it.second.hex() })
        assertEquals(listOf("sent $conn", "sent $conn", "sent $conn"), sink.events)
        assertEquals(0, session.queuedForTest(conn))

        // Unsubscribing ends the connection.
        run {
            serverCallback().onDescriptorWriteRequest(device, 9, cccd(), false, true, 0, BluetoothGattDescriptor.DISABLE_NOTIFICATION_VALUE)
        }
        assertEquals("disconnected $conn", sink.events.last())
        assertTrue(serverShadow().isConnectionCancelled(device))
    }

    @Test
    fun peripheralNotificationsTheOsRefusesStayQueued() {
        // Robolectric's own server refuses every notification: the packet must stay, retried, never dropped.
        run { radio.startAdvertising(tags) }
        val (conn, _) = subscribe()
        run { radio.send(conn.toULong(), bytes("aa")) }
        loop.advance(10_000)
        assertEquals(1, session.queuedForTest(conn))
        assertEquals(0, sink.count("sent"))
        assertTrue(loop.pendingTimers > 0)
    }

    @Test
    fun peripheralConnectionEndsWhenTheCentralDisconnects() {
        run { radio.startAdvertising(tags) }
        val (conn, device) = subscribe()
        run { serverShadow().notifyDisconnection(device) }
        assertEquals("disconnected $conn", sink.events.last())
        assertEquals(emptySet<Long>(), session.connectionsForTest)
        run { radio.send(conn.toULong(), bytes("aa")) } // on a connection that is gone: dropped, no report
        assertEquals("disconnected $conn", sink.events.last())
    }

    @Test
    fun serverRefusesWhatItDoesNotServe() {
        run { radio.startAdvertising(tags) }
        val device = adapter.getRemoteDevice(centralAddress)
        run { serverShadow().notifyConnection(device) }
        val cb = serverCallback()
        run {
            cb.onCharacteristicWriteRequest(device, 1, serverCharacteristic(TEST_UUIDS.psm), false, true, 0, bytes("01"))
            cb.onCharacteristicWriteRequest(device, 2, serverCharacteristic(TEST_UUIDS.rx), true, true, 0, bytes("01"))
            cb.onDescriptorWriteRequest(device, 3, cccd(), false, true, 0, bytes("010000"))
            cb.onCharacteristicReadRequest(device, 4, 0, serverCharacteristic(TEST_UUIDS.rx))
            cb.onDescriptorReadRequest(device, 5, 0, cccd())
            cb.onExecuteWrite(device, 6, true)
        }
        assertEquals(6, serverShadow().responses.size)
        assertEquals(emptyList<String>(), sink.events)
    }

    @Test
    fun peripheralAcceptsL2capChannels() {
        run { radio.startAdvertising(tags) }
        val listener = session.l2capServerForTest!!
        val device = adapter.getRemoteDevice(centralAddress)
        val theirs = shadowOf(listener).deviceConnected(device)
        loop.runUntil { sink.connections.isNotEmpty() }
        val conn = sink.connections.single()
        assertEquals("connected $conn $centralAddress peripheral ${BluetoothChannel.L2cap(2048u)}", sink.events.single())
        val socket = session.l2capSocketForTest(conn)!!
        assertTrue(socket === theirs)
        val shadow: ShadowBluetoothSocket = Shadow.extract(socket)

        shadow.inputStreamFeeder.write(bytes("0300010203"))
        shadow.inputStreamFeeder.flush()
        loop.runUntil { sink.received.isNotEmpty() }
        assertEquals("0300010203", sink.received.joinToString("") { it.second.hex() })

        run { radio.send(conn.toULong(), bytes("020009")); radio.send(conn.toULong(), bytes("01000a")) }
        loop.runUntil { sink.count("sent") == 2 }
        val out = ByteArray(6)
        var read = 0
        while (read < 6) read += shadow.outputStreamSink.read(out, read, 6 - read)
        assertEquals("02000901000a", out.hex())

        // The central closes the channel: the connection is reported down.
        shadow.inputStreamFeeder.close()
        loop.runUntil { sink.count("disconnected") == 1 }
        assertEquals("disconnected $conn", sink.events.last())
    }

    // ------------------------------------------------------------------------------------------------ central

    @Test
    @Config(shadows = [ReadableGattShadow::class])
    fun centralConnectsOverGattAndMovesPackets() {
        val (conn, gatt) = dial(psm = 0)
        assertEquals(1, ReadableGattShadow.readCount) // the PSM: 0, so no L2CAP
        assertEquals("connected $conn $peerAddress central ${BluetoothChannel.Gatt(517u)}", sink.events.single())
        val shadow = shadowGatt(gatt)
        assertEquals(BluetoothGatt.CONNECTION_PRIORITY_HIGH, shadow.connectionPriority)
        assertArrayEquals(BluetoothGattDescriptor.ENABLE_NOTIFICATION_VALUE, shadow.latestWrittenBytes) // the CCCD

        run { radio.send(conn.toULong(), bytes("aa")); radio.send(conn.toULong(), bytes("bb")) }
        assertEquals(listOf("sent $conn", "sent $conn"), sink.events.drop(1))
        assertEquals("bb", shadow.latestWrittenBytes.hex())

        val tx = gatt.getService(TEST_UUIDS.service).getCharacteristic(TEST_UUIDS.tx)
        run { shadow.gattCallback.onCharacteristicChanged(gatt, tx, bytes("0102")) } // API 33+
        @Suppress("DEPRECATION")
        tx.value = bytes("0304")
        @Suppress("DEPRECATION")
        run { shadow.gattCallback.onCharacteristicChanged(gatt, tx) } // before API 33
        run { shadow.gattCallback.onMtuChanged(gatt, 247, BluetoothGatt.GATT_SUCCESS) }
        assertEquals(listOf("received $conn 0102", "received $conn 0304", "mtu $conn 247"), sink.events.drop(3))

        run { shadow.notifyDisconnection(peerAddress) }
        assertEquals("disconnected $conn", sink.events.last())
        assertTrue(shadow.isClosed)
    }

    @Test
    @Config(shadows = [ControlledGattShadow::class])
    fun centralWritesOneAtATimeAndRetriesWhenBusy() {
        val (conn, gatt) = dial()
        val callback = shadowGatt(gatt).gattCallback
        val rx = gatt.getService(TEST_UUIDS.service).getCharacteristic(TEST_UUIDS.rx)
        fun written() = ControlledGattShadow.written.map { it.hex() }
        ControlledGattShadow.answers.addAll(listOf(BluetoothStatusCodes.SUCCESS, BluetoothStatusCodes.ERROR_GATT_WRITE_REQUEST_BUSY))
        run { for (p in listOf("01", "02", "03")) radio.send(conn.toULong(), bytes(p)) }
        assertEquals(listOf("01"), written())
        assertEquals(0, sink.count("sent"))
        run { callback.onCharacteristicWrite(gatt, rx, BluetoothGatt.GATT_SUCCESS) }
        assertEquals(listOf("01", "02"), written()) // 02: busy
        assertEquals(1, sink.count("sent"))
        loop.advance(5)
        assertEquals(listOf("01", "02", "02"), written())
        run { callback.onCharacteristicWrite(gatt, rx, BluetoothGatt.GATT_FAILURE) } // not taken after all: again
        assertEquals(1, sink.count("sent"))
        loop.advance(40)
        assertEquals(listOf("01", "02", "02", "02"), written())
        run { callback.onCharacteristicWrite(gatt, rx, BluetoothGatt.GATT_SUCCESS) }
        run { callback.onCharacteristicWrite(gatt, rx, BluetoothGatt.GATT_SUCCESS) }
        assertEquals(listOf("01", "02", "02", "02", "03"), written())
        assertEquals(3, sink.count("sent"))
        assertEquals(0, session.queuedForTest(conn))
    }

    @Test
    @Config(shadows = [ControlledGattShadow::class])
    fun thePeersServicesChangingEndsTheLinkOrTheAttempt() {
        // Connected: the peer's app restarted or its sync stopped (API 31+ tells): the link is lost.
        val (conn, gatt) = dial()
        val shadow = shadowGatt(gatt)
        run { shadow.gattCallback.onServiceChanged(gatt) }
        assertEquals("disconnected $conn", sink.events.last())
        assertEquals(emptySet<Long>(), session.connectionsForTest)
        assertTrue(shadow.isClosed)
        assertTrue(logs().toString(), logs().contains("connection $conn down: the peer's services changed"))

        // Still subscribing to TX: the attempt fails.
        ControlledGattShadow.holdDescriptorWrites = true
        val other = "AA:BB:CC:DD:EE:02"
        run { radio.connect(other) }
        val dialling = gattOf(other)
        val diallingShadow = shadowGatt(dialling)
        val service = peerService()
        diallingShadow.addDiscoverableService(service)
        diallingShadow.allowCharacteristicNotification(service.getCharacteristic(TEST_UUIDS.tx))
        run { diallingShadow.notifyConnection(other) }
        assertEquals(setOf(other), session.attemptsForTest) // the CCCD write is outstanding
        run { diallingShadow.gattCallback.onServiceChanged(dialling) }
        assertEquals("connectFailed $other", sink.events.last())
        assertTrue(diallingShadow.isClosed)
        assertEquals(emptySet<String>(), session.attemptsForTest)
        assertEquals(1, sink.count("connected"))
    }

    @Test
    fun attemptFailsWhenNotificationsCannotBeEnabled() {
        run { radio.connect(peerAddress) }
        val shadow = shadowGatt(gattOf(peerAddress))
        shadow.addDiscoverableService(peerService()) // TX notifications not allowed by this peer
        run { shadow.notifyConnection(peerAddress) }
        assertEquals(listOf("connectFailed $peerAddress"), sink.events)
        assertTrue(logs().any { it.contains("cannot enable notifications") })
        assertTrue(shadow.isClosed)
    }

    @Test
    @Config(shadows = [ControlledGattShadow::class])
    fun notificationsArrivingWhileSubscribingAreDeliveredAfterConnected() {
        ControlledGattShadow.holdDescriptorWrites = true
        run { radio.connect(peerAddress) }
        val gatt = gattOf(peerAddress)
        val shadow = shadowGatt(gatt)
        val service = peerService()
        val tx = service.getCharacteristic(TEST_UUIDS.tx)
        shadow.addDiscoverableService(service)
        shadow.allowCharacteristicNotification(tx)
        run { shadow.notifyConnection(peerAddress) }
        assertEquals(emptyList<String>(), sink.events) // the CCCD write is outstanding
        // The peer already reported the link and sent its Hello, which overtakes the write's confirmation.
        run { shadow.gattCallback.onCharacteristicChanged(gatt, tx, bytes("01aa")) }
        assertEquals(emptyList<String>(), sink.events)
        run { shadow.gattCallback.onDescriptorWrite(gatt, tx.getDescriptor(ShoalGattLayout.CCCD), BluetoothGatt.GATT_SUCCESS) }
        val conn = sink.connections.single()
        assertEquals(listOf("connected $conn $peerAddress central ${BluetoothChannel.Gatt(517u)}", "received $conn 01aa"), sink.events)
    }

    @Test
    @Config(shadows = [ReadableGattShadow::class])
    fun centralUsesL2capWhenThePeerPublishesAPsm() {
        val (conn, _) = dial(psm = 0x81)
        assertEquals("connected $conn $peerAddress central ${BluetoothChannel.L2cap(2048u)}", sink.events.single())
        val socket = session.l2capSocketForTest(conn)!!
        val shadow: ShadowBluetoothSocket = Shadow.extract(socket)
        shadow.inputStreamFeeder.write(bytes("01000a"))
        shadow.inputStreamFeeder.flush()
        loop.runUntil { sink.received.isNotEmpty() }
        assertEquals("received $conn 01000a", sink.events.last())
        run { radio.send(conn.toULong(), bytes("01000b")) }
        loop.runUntil { sink.count("sent") == 1 }
        val out = ByteArray(3)
        var read = 0
        while (read < 3) read += shadow.outputStreamSink.read(out, read, 3 - read)
        assertEquals("01000b", out.hex())

        // The core closes it: the channel and the GATT client are released, and nothing is reported.
        run { radio.disconnect(conn.toULong()) }
        assertEquals(emptySet<Long>(), session.connectionsForTest)
        assertTrue(shadowGatt(gattOf(peerAddress)).isClosed)
        shadow.inputStreamFeeder.close() // (Robolectric's socket does not unblock its reader on close)
        Thread.sleep(50)
        loop.runAll()
        assertEquals(0, sink.count("disconnected"))
    }

    @Test
    @Config(shadows = [FailingL2capDeviceShadow::class, ReadableGattShadow::class])
    fun l2capFailureFallsBackToGatt() {
        run { radio.connect(peerAddress) }
        val shadow = shadowGatt(gattOf(peerAddress))
        val service = peerService(psm = 0x85)
        shadow.addDiscoverableService(service)
        shadow.allowCharacteristicNotification(service.getCharacteristic(TEST_UUIDS.tx))
        run { shadow.notifyConnection(peerAddress) }
        loop.runUntil { sink.connections.isNotEmpty() }
        val conn = sink.connections.single()
        assertEquals("connected $conn $peerAddress central ${BluetoothChannel.Gatt(517u)}", sink.events.single())
        assertTrue(logs().toString(), logs().any { it.startsWith("L2CAP channel to $peerAddress failed") })
    }

    @Test
    fun connectFailures() {
        // Refused outright: not an address.
        run { radio.connect("not an address") }
        assertEquals(listOf("connectFailed not an address"), sink.events)

        // The stack reports an error (the infamous 133).
        run { radio.connect(peerAddress) }
        run { shadowOf(adapter.getRemoteDevice(peerAddress)).simulateGattConnectionChange(133, BluetoothProfile.STATE_DISCONNECTED) }
        assertEquals("connectFailed $peerAddress", sink.events.last())
        assertTrue(shadowGatt(gattOf(peerAddress)).isClosed)

        // No answer at all: timed out.
        run { radio.connect("AA:BB:CC:DD:EE:03") }
        loop.advance(BleSession.CONNECT_TIMEOUT_MS)
        assertEquals("connectFailed AA:BB:CC:DD:EE:03", sink.events.last())
        assertTrue(shadowGatt(gattOf("AA:BB:CC:DD:EE:03")).isClosed)

        // The peer does not serve Shoal.
        run { radio.connect("AA:BB:CC:DD:EE:04") }
        val other = BluetoothGattService(UUID.randomUUID(), BluetoothGattService.SERVICE_TYPE_PRIMARY)
        shadowGatt(gattOf("AA:BB:CC:DD:EE:04")).addDiscoverableService(other)
        run { shadowGatt(gattOf("AA:BB:CC:DD:EE:04")).notifyConnection("AA:BB:CC:DD:EE:04") }
        assertEquals("connectFailed AA:BB:CC:DD:EE:04", sink.events.last())
        assertTrue(logs().any { it.endsWith("no Shoal service") })
        assertEquals(4, sink.count("connectFailed"))
        assertEquals(emptySet<String>(), session.attemptsForTest)
    }

    @Test
    fun cancelledAttemptReportsNothing() {
        run { radio.connect(peerAddress) }
        run { radio.connect(peerAddress) } // already dialling: ignored
        assertEquals(1, shadowOf(adapter.getRemoteDevice(peerAddress)).bluetoothGatts.size)
        run { radio.cancelConnect(peerAddress) }
        val shadow = shadowGatt(gattOf(peerAddress))
        assertTrue(shadow.isClosed)
        run { shadow.gattCallback.onConnectionStateChange(gattOf(peerAddress), BluetoothGatt.GATT_SUCCESS, BluetoothProfile.STATE_CONNECTED) }
        loop.advance(BleSession.CONNECT_TIMEOUT_MS * 2)
        assertEquals(emptyList<String>(), sink.events)
    }

    // ------------------------------------------------------------------------------------------------ lifecycle

    @Test
    @Config(shadows = [NotifyingGattServerShadow::class])
    fun bluetoothOffEndsEverythingAndOnResumes() {
        run { radio.startAdvertising(tags); radio.startScanning() }
        val (peripheralConn, _) = subscribe()
        val (centralConn, _) = dial()
        run { radio.connect("AA:BB:CC:DD:EE:09") }
        sink.clear()

        shadowOf(adapter).setEnabled(false)
        run { app.sendBroadcast(Intent(BluetoothAdapter.ACTION_STATE_CHANGED).putExtra(BluetoothAdapter.EXTRA_STATE, BluetoothAdapter.STATE_OFF)) }
        assertEquals(
            setOf("disconnected $peripheralConn", "disconnected $centralConn", "connectFailed AA:BB:CC:DD:EE:09"),
            sink.events.toSet(),
        )
        assertNull(session.gattServerForTest)
        assertEquals(emptySet<Long>(), session.connectionsForTest)

        // Commands while off do nothing harmful; connecting fails at once.
        run { radio.connect(peerAddress) }
        assertEquals("connectFailed $peerAddress", sink.events.last())

        shadowOf(adapter).setEnabled(true)
        run { app.sendBroadcast(Intent(BluetoothAdapter.ACTION_STATE_CHANGED).putExtra(BluetoothAdapter.EXTRA_STATE, BluetoothAdapter.STATE_ON)) }
        assertNotNull(session.gattServerForTest)
        assertEquals(2, logs().count { it == "advertising with service data" })
        assertEquals(ScanSettings.SCAN_MODE_LOW_LATENCY, shadowOf(adapter.bluetoothLeScanner).activeScans.single().scanSettings()!!.scanMode)
    }

    @Test
    fun missingPermissionsSkipWhatTheyGuard() {
        shadowOf(app).denyPermissions(*ShoalBluetoothPermissions.required())
        run { radio.startScanning(); radio.startAdvertising(tags); radio.connect(peerAddress) }
        assertTrue(shadowOf(adapter.bluetoothLeScanner).activeScans.isEmpty())
        assertNull(session.gattServerForTest)
        assertEquals(listOf("connectFailed $peerAddress"), sink.events)
        assertTrue(logs().any { it.startsWith("cannot scan: missing permission") })
        assertTrue(logs().any { it.startsWith("cannot advertise: missing permission") })
    }

    @Test
    fun stopClosesEverythingAndReportsNothingMore() {
        run { radio.startAdvertising(tags); radio.startScanning() }
        val (_, device) = subscribe()
        val (centralConn, gatt) = dial()
        val server = server()
        val serverShadow = serverShadow()
        val serverCallback = serverCallback()
        val scan = scanCallback()
        val listener = session.l2capServerForTest!!
        val oldSession = session
        val oldLoop = loop
        sink.clear()

        radio.stop()
        oldLoop.runAll()
        assertTrue(oldLoop.isShutdown)
        assertTrue(serverShadow.isClosed)
        assertTrue(shadowGatt(gatt).isClosed)
        assertTrue(shadowOf(adapter.bluetoothLeScanner).activeScans.isEmpty())
        assertEquals(0, shadowOf(adapter.bluetoothLeAdvertiser).advertisementRequestCount)
        assertEquals(emptySet<Long>(), oldSession.connectionsForTest)
        try {
            listener.accept()
            throw AssertionError("the L2CAP listener is still open")
        } catch (_: java.io.IOException) {
        }

        // Late callbacks and commands: nothing is reported, nothing throws.
        scan.onScanResult(ScanSettings.CALLBACK_TYPE_ALL_MATCHES, scanResult(peerAddress, tags))
        serverCallback.onCharacteristicWriteRequest(device, 1, server.getService(TEST_UUIDS.service)?.getCharacteristic(TEST_UUIDS.rx), false, false, 0, bytes("01"))
        shadowGatt(gatt).gattCallback.onConnectionStateChange(gatt, 0, BluetoothProfile.STATE_DISCONNECTED)
        radio.send(centralConn.toULong(), bytes("01"))
        radio.startScanning()
        radio.connect(peerAddress)
        radio.disconnect(centralConn.toULong())
        radio.stop()
        settle(oldLoop)
        assertEquals(emptyList<String>(), sink.events)

        // And it starts again.
        val again = RecordingSink()
        radio.startWith(again)
        run { radio.startScanning() }
        run { scanCallback().onScanResult(ScanSettings.CALLBACK_TYPE_ALL_MATCHES, scanResult(peerAddress, tags)) }
        assertEquals(listOf("discovered $peerAddress ${tags.hex()}"), again.events)
        assertTrue(loops.size == 2)
    }

    @Test
    fun stopEndsTheRadiosThreads() {
        // The production loop and the L2CAP accept thread: after stop, none is left running.
        val before = Thread.getAllStackTraces().keys
        fun threads() = Thread.getAllStackTraces().keys.filter { it.isAlive && it !in before }.map { it.name }
        val real = AndroidBluetoothRadio(app, useL2cap = true, { TEST_UUIDS }, { ExecutorLoop("Shoal BLE test") })
        real.startWith(RecordingSink())
        real.startAdvertising(tags)
        real.startScanning()
        val deadline = System.currentTimeMillis() + 15_000
        while (real.sessionForTest?.l2capServerForTest == null && System.currentTimeMillis() < deadline) Thread.sleep(10)
        val listener = real.sessionForTest!!.l2capServerForTest!!
        assertTrue(threads().contains("Shoal BLE test"))
        assertTrue(threads().contains("Shoal BLE L2CAP accept"))
        real.stop()
        while (!listenerClosed(listener) && System.currentTimeMillis() < deadline) Thread.sleep(10)
        // Robolectric's listener does not wake a blocked accept() on close (Android's does): a connection does,
        // and the closed listener then ends the loop.
        shadowOf(listener).deviceConnected(adapter.getRemoteDevice(centralAddress))
        while (threads().any { it.startsWith("Shoal BLE") } && System.currentTimeMillis() < deadline + 15_000) Thread.sleep(10)
        assertEquals(emptyList<String>(), threads().filter { it.startsWith("Shoal BLE") })
    }

    private fun listenerClosed(listener: android.bluetooth.BluetoothServerSocket): Boolean =
        org.robolectric.util.ReflectionHelpers.getField<Boolean>(shadowOf(listener), "closed")

    @Test
    fun callbacksNeverThrow() {
        run { radio.startAdvertising(tags); radio.startScanning(); radio.connect(peerAddress) }
        val server = serverCallback()
        val client: BluetoothGattCallback = shadowGatt(gattOf(peerAddress)).gattCallback
        val gatt = gattOf(peerAddress)
        val unknown = adapter.getRemoteDevice("00:00:00:00:00:01")
        val scan = scanCallback()
        run {
            // Nulls where Java allows them, unknown devices, out-of-order events.
            server.onConnectionStateChange(null, 0, BluetoothProfile.STATE_CONNECTED)
            server.onConnectionStateChange(unknown, 0, BluetoothProfile.STATE_DISCONNECTED)
            server.onMtuChanged(null, 100)
            server.onCharacteristicWriteRequest(unknown, 1, null, false, true, 0, null)
            server.onCharacteristicWriteRequest(null, 1, null, false, true, 0, null)
            server.onCharacteristicReadRequest(unknown, 1, 5, serverCharacteristic(TEST_UUIDS.psm))
            server.onCharacteristicReadRequest(unknown, 1, 0, null)
            server.onDescriptorWriteRequest(unknown, 1, null, false, true, 0, null)
            server.onDescriptorWriteRequest(unknown, 1, cccd(), false, true, 0, null)
            server.onDescriptorReadRequest(unknown, 1, 9, cccd())
            server.onNotificationSent(unknown, 0)
            server.onNotificationSent(null, 0)
            server.onServiceAdded(BluetoothGatt.GATT_FAILURE, null)
            server.onExecuteWrite(null, 1, false)
            client.onConnectionStateChange(null, 0, 0)
            client.onMtuChanged(null, 5, 0)
            client.onServicesDiscovered(null, 0)
            client.onServicesDiscovered(gatt, BluetoothGatt.GATT_FAILURE)
            @Suppress("DEPRECATION")
            client.onCharacteristicRead(null, null, 0)
            client.onDescriptorWrite(null, null, 0)
            client.onCharacteristicWrite(null, null, 0)
            @Suppress("DEPRECATION")
            client.onCharacteristicChanged(null, null)
            scan.onScanResult(0, null)
            scan.onBatchScanResults(null)
            scan.onScanResult(0, ScanResult(unknown, null, 0, 0))
        }
        // A sink that throws does not break the radio.
        val throwing = object : RadioSink by RecordingSink() {
            override fun discovered(address: String, serviceData: ByteArray?) = throw IllegalStateException("app bug")
        }
        radio.startWith(throwing)
        run { radio.startScanning() }
        run { scanCallback().onScanResult(ScanSettings.CALLBACK_TYPE_ALL_MATCHES, scanResult(peerAddress, tags)) }
        assertTrue(logs().any { it.startsWith("reporting discovered failed") })
    }

    @Test
    fun commandsBeforeStartAreIgnored() {
        val idle = AndroidBluetoothRadio(app, useL2cap = true, { TEST_UUIDS }, { TestLoop() })
        idle.startScanning()
        idle.startAdvertising(tags)
        idle.connect(peerAddress)
        idle.cancelConnect(peerAddress)
        idle.send(1u, bytes("01"))
        idle.disconnect(1u)
        idle.setForeground(false)
        idle.stop()
        assertNull(idle.sessionForTest)
        assertFalse(logs().any { it.contains("failed") })
    }
}
