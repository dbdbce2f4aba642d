package dev.shoaldb.android

import android.Manifest
import android.bluetooth.BluetoothGatt
import android.bluetooth.BluetoothStatusCodes
import android.os.Build
import dev.shoaldb.BluetoothChannel
import dev.shoaldb.BluetoothEvents
import dev.shoaldb.NoHandle
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import org.robolectric.RobolectricTestRunner
import org.robolectric.Shadows.shadowOf
import org.robolectric.annotation.Config
import java.util.concurrent.CopyOnWriteArrayList

/**
 * The radio on Android 9 (API 28): the legacy permissions, the pre-33 write / notify / callback calls, and no L2CAP
 * (API 29+). Robolectric fails any call to an API the SDK lacks, so these runs also check the version guards.
 */
@RunWith(RobolectricTestRunner::class)
@Config(sdk = [28])
class AndroidBluetoothRadioApi28Test : RadioTestBase() {

    @Test
    fun legacyPermissions() {
        assertEquals(28, Build.VERSION.SDK_INT)
        assertEquals(
            listOf(Manifest.permission.BLUETOOTH, Manifest.permission.BLUETOOTH_ADMIN, Manifest.permission.ACCESS_FINE_LOCATION),
            ShoalBluetoothPermissions.required().toList(),
        )
        assertEquals(0, ShoalBluetoothPermissions.missing(app).size)
        shadowOf(app).denyPermissions(Manifest.permission.ACCESS_FINE_LOCATION)
        assertEquals(listOf(Manifest.permission.ACCESS_FINE_LOCATION), ShoalBluetoothPermissions.missing(app).toList())

        // No location permission: no scan. Coarse location is enough before API 29.
        run { radio.startScanning() }
        assertTrue(shadowOf(adapter.bluetoothLeScanner).activeScans.isEmpty())
        shadowOf(app).grantPermissions(Manifest.permission.ACCESS_COARSE_LOCATION)
        run { radio.setForeground(false); radio.startScanning() }
        assertEquals(1, shadowOf(adapter.bluetoothLeScanner).activeScans.size)
    }

    @Test
    fun centralUsesGattEvenWhenThePeerOffersL2cap() {
        val (conn, gatt) = dial(psm = 0x81) // no L2CAP before API 29: the PSM is not even read
        assertEquals("connected $conn $peerAddress central ${BluetoothChannel.Gatt(517u)}", sink.events.single())
        val shadow = shadowGatt(gatt)
        assertArrayEquals(byteArrayOf(1, 0), shadow.latestWrittenBytes) // the CCCD, through the legacy call
        assertNull(shadow.latestReadBytes)

        run { radio.send(conn.toULong(), bytes("aa")); radio.send(conn.toULong(), bytes("bb")) }
        assertEquals(listOf("sent $conn", "sent $conn"), sink.events.drop(1))
        assertEquals("bb", shadow.latestWrittenBytes.hex())

        val tx = gatt.getService(TEST_UUIDS.service).getCharacteristic(TEST_UUIDS.tx)
        @Suppress("DEPRECATION")
        tx.value = bytes("0304")
        @Suppress("DEPRECATION")
        run { shadow.gattCallback.onCharacteristicChanged(gatt, tx) }
        assertEquals("received $conn 0304", sink.events.last())
    }

    @Test
    @Config(shadows = [ControlledGattShadow::class])
    fun centralLegacyWritesRetryWhenBusy() {
        val (conn, gatt) = dial()
        val rx = gatt.getService(TEST_UUIDS.service).getCharacteristic(TEST_UUIDS.rx)
        ControlledGattShadow.answers.addAll(listOf(BluetoothStatusCodes.ERROR_GATT_WRITE_REQUEST_BUSY))
        run { radio.send(conn.toULong(), bytes("01")); radio.send(conn.toULong(), bytes("02")) }
        assertEquals(listOf("01"), ControlledGattShadow.written.map { it.hex() }) // refused (false)
        loop.advance(5)
        assertEquals(listOf("01", "01"), ControlledGattShadow.written.map { it.hex() })
        run { shadowGatt(gatt).gattCallback.onCharacteristicWrite(gatt, rx, BluetoothGatt.GATT_SUCCESS) }
        run { shadowGatt(gatt).gattCallback.onCharacteristicWrite(gatt, rx, BluetoothGatt.GATT_SUCCESS) }
        assertEquals(listOf("01", "01", "02"), ControlledGattShadow.written.map { it.hex() })
        assertEquals(2, sink.count("sent"))
    }

    @Test
    @Config(shadows = [NotifyingGattServerShadow::class])
    fun peripheralWithoutL2capAndLegacyNotifications() {
        run { radio.startAdvertising(tags) }
        assertNull(session.l2capServerForTest)
        val device = adapter.getRemoteDevice(centralAddress)
        run { serverCallback().onCharacteristicReadRequest(device, 1, 0, serverCharacteristic(TEST_UUIDS.psm)) }
        assertArrayEquals(byteArrayOf(0, 0), serverShadow().responses.last()) // no L2CAP: PSM 0

        val (conn, _) = subscribe(mtu = 100)
        assertEquals("connected $conn $centralAddress peripheral ${BluetoothChannel.Gatt(100u)}", sink.events.single())
        NotifyingGattServerShadow.answers.add(BluetoothStatusCodes.ERROR_GATT_WRITE_REQUEST_BUSY)
        run { radio.send(conn.toULong(), bytes("aa")) }
        loop.advance(5)
        run { serverCallback().onNotificationSent(device, BluetoothGatt.GATT_SUCCESS) }
        assertEquals(listOf("aa", "aa"), NotifyingGattServerShadow.notified.map { it.second.hex() })
        assertEquals("sent $conn", sink.events.last())
    }
}

/** The core's `BluetoothEvents`, faked (a UniFFI object constructed without a Rust object behind it). */
class RecordingEvents : BluetoothEvents(NoHandle) {
    val calls = CopyOnWriteArrayList<String>()

    override fun discovered(address: String, serviceData: ByteArray?) {
        calls.add("discovered $address ${serviceData?.hex()}")
    }

    override fun connected(connection: ULong, address: String, central: Boolean, channel: BluetoothChannel) {
        calls.add("connected $connection $address $central $channel")
    }

    override fun mtuChanged(connection: ULong, mtu: UShort) {
        calls.add("mtu $connection $mtu")
    }

    override fun received(connection: ULong, packet: ByteArray) {
        calls.add("received $connection ${packet.hex()}")
    }

    override fun sent(connection: ULong) {
        calls.add("sent $connection")
    }

    override fun disconnected(connection: ULong) {
        calls.add("disconnected $connection")
    }

    override fun connectFailed(address: String) {
        calls.add("connectFailed $address")
    }
}

/** `start(events)` — the path the core takes — reports to the core's `BluetoothEvents`. */
@RunWith(RobolectricTestRunner::class)
@Config(sdk = [34])
class BluetoothEventsWiringTest : RadioTestBase() {
    @Test
    fun reportsReachTheCoresEvents() {
        val events = RecordingEvents()
        radio.start(events)
        run { radio.startScanning(); radio.startAdvertising(tags) }
        run { scanCallback().onScanResult(0, scanResult(peerAddress, tags)) }
        val device = adapter.getRemoteDevice(centralAddress)
        run { serverShadow().notifyConnection(device) }
        run { serverCallback().onMtuChanged(device, 200) }
        run { serverCallback().onDescriptorWriteRequest(device, 1, cccd(), false, true, 0, byteArrayOf(1, 0)) }
        run { serverShadow().notifyOnCharacteristicWriteRequest(device, 2, serverCharacteristic(TEST_UUIDS.rx), false, false, 0, bytes("0102")) }
        run { serverCallback().onMtuChanged(device, 100_000) } // clamped to a u16
        run { radio.connect("bad") }
        run { serverShadow().notifyDisconnection(device) }
        val conn = events.calls[1].split(" ")[1]
        assertEquals(
            listOf(
                "discovered $peerAddress ${tags.hex()}",
                "connected $conn $centralAddress false ${BluetoothChannel.Gatt(200u)}",
                "received $conn 0102",
                "mtu $conn 65535",
                "connectFailed bad",
                "disconnected $conn",
            ),
            events.calls,
        )
        assertEquals(emptyList<String>(), sink.events) // the first run's sink heard nothing after the restart
    }

    @Test
    fun publicConstructorUsesTheCoresUuidsAndItsOwnThread() {
        // The production path: UUIDs from the native library, the executor loop.
        val real = AndroidBluetoothRadio(app)
        val events = RecordingEvents()
        real.start(events)
        real.startScanning()
        val deadline = System.currentTimeMillis() + 15_000
        while (shadowOf(adapter.bluetoothLeScanner).activeScans.isEmpty() && System.currentTimeMillis() < deadline) Thread.sleep(10)
        val scan = shadowOf(adapter.bluetoothLeScanner).activeScans.single()
        assertEquals(TEST_UUIDS.service, scan.scanFilters().single().serviceUuid!!.uuid)
        scan.scanCallback()!!.onScanResult(0, scanResult(peerAddress, null))
        while (events.calls.isEmpty() && System.currentTimeMillis() < deadline) Thread.sleep(10)
        assertEquals(listOf("discovered $peerAddress null"), events.calls)
        real.stop()
    }
}
