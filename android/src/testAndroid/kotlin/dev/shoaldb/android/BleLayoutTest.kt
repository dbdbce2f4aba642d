package dev.shoaldb.android

import android.Manifest
import android.bluetooth.BluetoothGattCharacteristic
import android.bluetooth.BluetoothGattDescriptor
import android.bluetooth.BluetoothGattService
import android.bluetooth.le.AdvertiseSettings
import android.bluetooth.le.ScanSettings
import android.os.Build
import android.os.ParcelUuid
import dev.shoaldb.bluetoothUuids
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNotNull
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Test
import org.junit.runner.RunWith
import org.robolectric.RobolectricTestRunner
import org.robolectric.RuntimeEnvironment
import org.robolectric.Shadows.shadowOf
import org.robolectric.annotation.Config
import java.io.File
import javax.xml.parsers.DocumentBuilderFactory

/** What the radio builds: the GATT service, the advertisement, the scan; and the permissions. */
@RunWith(RobolectricTestRunner::class)
@Config(sdk = [34])
class BleLayoutTest {
    @Test
    fun gattServiceLayout() {
        val service = ShoalGattLayout.service(TEST_UUIDS)
        assertEquals(TEST_UUIDS.service, service.uuid)
        assertEquals(BluetoothGattService.SERVICE_TYPE_PRIMARY, service.type)
        assertEquals(listOf(TEST_UUIDS.rx, TEST_UUIDS.tx, TEST_UUIDS.psm), service.characteristics.map { it.uuid })

        val rx = service.getCharacteristic(TEST_UUIDS.rx)
        assertEquals(BluetoothGattCharacteristic.PROPERTY_WRITE_NO_RESPONSE, rx.properties)
        assertEquals(BluetoothGattCharacteristic.PERMISSION_WRITE, rx.permissions)
        assertTrue(rx.descriptors.isEmpty())

        val tx = service.getCharacteristic(TEST_UUIDS.tx)
        assertEquals(BluetoothGattCharacteristic.PROPERTY_NOTIFY, tx.properties)
        assertEquals(listOf(ShoalGattLayout.CCCD), tx.descriptors.map { it.uuid })
        val cccd = tx.getDescriptor(ShoalGattLayout.CCCD)
        assertEquals("00002902-0000-1000-8000-00805f9b34fb", cccd.uuid.toString())
        assertEquals(BluetoothGattDescriptor.PERMISSION_READ or BluetoothGattDescriptor.PERMISSION_WRITE, cccd.permissions)

        val psm = service.getCharacteristic(TEST_UUIDS.psm)
        assertEquals(BluetoothGattCharacteristic.PROPERTY_READ, psm.properties)
        assertEquals(BluetoothGattCharacteristic.PERMISSION_READ, psm.permissions)
    }

    @Test
    fun advertisement() {
        val settings = ShoalGattLayout.advertiseSettings(foreground = true)
        assertTrue(settings.isConnectable)
        assertEquals(0, settings.timeout)
        assertEquals(AdvertiseSettings.ADVERTISE_MODE_LOW_LATENCY, settings.mode)
        assertEquals(AdvertiseSettings.ADVERTISE_MODE_BALANCED, ShoalGattLayout.advertiseSettings(false).mode)

        val data = ShoalGattLayout.advertiseData(TEST_UUIDS)
        assertEquals(listOf(ParcelUuid(TEST_UUIDS.service)), data.serviceUuids)
        assertTrue(data.serviceData.isEmpty())
        assertFalse(data.includeDeviceName)
        assertFalse(data.includeTxPowerLevel)

        val tags = ByteArray(12) { it.toByte() }
        val response = ShoalGattLayout.scanResponse(TEST_UUIDS, tags)
        assertNotNull(response)
        assertArrayEquals(tags, response!!.serviceData[ParcelUuid(TEST_UUIDS.service)])
        assertTrue(response.serviceUuids.isNullOrEmpty())
        assertNull(ShoalGattLayout.scanResponse(TEST_UUIDS, ByteArray(0)))
        assertNull(ShoalGattLayout.scanResponse(TEST_UUIDS, null))
    }

    @Test
    fun scan() {
        val filters = ShoalGattLayout.scanFilters(TEST_UUIDS)
        assertEquals(1, filters.size)
        assertEquals(ParcelUuid(TEST_UUIDS.service), filters[0].serviceUuid)
        val fg = ShoalGattLayout.scanSettings(foreground = true)
        assertEquals(ScanSettings.SCAN_MODE_LOW_LATENCY, fg.scanMode)
        assertEquals(ScanSettings.CALLBACK_TYPE_ALL_MATCHES, fg.callbackType)
        assertEquals(0L, fg.reportDelayMillis)
        assertEquals(ScanSettings.SCAN_MODE_BALANCED, ShoalGattLayout.scanSettings(foreground = false).scanMode)
    }

    @Test
    fun psmAndCccdValues() {
        assertArrayEquals(byteArrayOf(0, 0), ShoalGattLayout.psmValue(0))
        assertArrayEquals(byteArrayOf(0x81.toByte(), 0), ShoalGattLayout.psmValue(0x81))
        assertArrayEquals(byteArrayOf(0x34, 0x12), ShoalGattLayout.psmValue(0x1234))
        assertArrayEquals(byteArrayOf(0, 0), ShoalGattLayout.psmValue(-1))
        assertArrayEquals(byteArrayOf(0, 0), ShoalGattLayout.psmValue(0x10000))
        assertEquals(0x1234, ShoalGattLayout.parsePsm(byteArrayOf(0x34, 0x12)))
        assertEquals(0xFFFF, ShoalGattLayout.parsePsm(byteArrayOf(-1, -1)))
        assertEquals(0, ShoalGattLayout.parsePsm(null))
        assertEquals(0, ShoalGattLayout.parsePsm(byteArrayOf(1)))
        assertEquals(0, ShoalGattLayout.parsePsm(byteArrayOf(1, 2, 3)))
        assertTrue(ShoalGattLayout.enablesNotifications(BluetoothGattDescriptor.ENABLE_NOTIFICATION_VALUE))
        assertTrue(ShoalGattLayout.enablesNotifications(BluetoothGattDescriptor.ENABLE_INDICATION_VALUE))
        assertFalse(ShoalGattLayout.enablesNotifications(BluetoothGattDescriptor.DISABLE_NOTIFICATION_VALUE))
        assertFalse(ShoalGattLayout.enablesNotifications(null))
    }

    @Test
    fun permissionsPerSdk() {
        val modern = listOf(Manifest.permission.BLUETOOTH_SCAN, Manifest.permission.BLUETOOTH_ADVERTISE, Manifest.permission.BLUETOOTH_CONNECT)
        val legacy = listOf(Manifest.permission.BLUETOOTH, Manifest.permission.BLUETOOTH_ADMIN, Manifest.permission.ACCESS_FINE_LOCATION)
        for (sdk in 31..36) assertEquals(modern, ShoalBluetoothPermissions.required(sdk).toList())
        for (sdk in 24..30) assertEquals(legacy, ShoalBluetoothPermissions.required(sdk).toList())
        assertEquals(modern, ShoalBluetoothPermissions.required().toList()) // this "device" is API 34
    }

    @Test
    fun missingPermissions() {
        val app = RuntimeEnvironment.getApplication()
        assertEquals(3, ShoalBluetoothPermissions.missing(app).size)
        shadowOf(app).grantPermissions(Manifest.permission.BLUETOOTH_SCAN, Manifest.permission.BLUETOOTH_CONNECT)
        assertEquals(listOf(Manifest.permission.BLUETOOTH_ADVERTISE), ShoalBluetoothPermissions.missing(app).toList())
        assertTrue(ShoalBluetoothPermissions.canScan(app))
        assertTrue(ShoalBluetoothPermissions.canConnect(app))
        assertFalse(ShoalBluetoothPermissions.canAdvertise(app))
        shadowOf(app).grantPermissions(Manifest.permission.BLUETOOTH_ADVERTISE)
        assertEquals(0, ShoalBluetoothPermissions.missing(app).size)
        assertTrue(ShoalBluetoothPermissions.canAdvertise(app))
    }

    /** The library's manifest declares every permission for the API levels where it applies. */
    @Test
    fun manifestDeclaresThePermissions() {
        val root = System.getProperty("shoal.root") ?: "../.."
        val manifest = File(root, "android/src/main/AndroidManifest.xml")
        val doc = DocumentBuilderFactory.newInstance().apply { isNamespaceAware = true }.newDocumentBuilder().parse(manifest)
        val ns = "http://schemas.android.com/apk/res/android"
        val declared = HashMap<String, Map<String, String>>()
        val nodes = doc.getElementsByTagName("uses-permission")
        for (i in 0 until nodes.length) {
            val e = nodes.item(i) as org.w3c.dom.Element
            val attrs = HashMap<String, String>()
            for (a in listOf("maxSdkVersion", "usesPermissionFlags")) {
                if (e.hasAttributeNS(ns, a)) attrs[a] = e.getAttributeNS(ns, a)
            }
            declared[e.getAttributeNS(ns, "name")] = attrs
        }
        for (p in ShoalBluetoothPermissions.required(34)) assertEquals(p, null, declared.getValue(p)["maxSdkVersion"])
        assertEquals("neverForLocation", declared.getValue(Manifest.permission.BLUETOOTH_SCAN)["usesPermissionFlags"])
        for (p in ShoalBluetoothPermissions.required(30)) assertEquals(p, "30", declared.getValue(p)["maxSdkVersion"])
        val features = doc.getElementsByTagName("uses-feature")
        val ble = (0 until features.length).map { features.item(it) as org.w3c.dom.Element }
            .single { it.getAttributeNS(ns, "name") == "android.hardware.bluetooth_le" }
        assertEquals("false", ble.getAttributeNS(ns, "required"))
        // The LAN permissions are still there.
        assertTrue(Manifest.permission.INTERNET in declared)
        assertEquals(34, Build.VERSION.SDK_INT)
    }
}

/** The UUIDs the radio uses are the core's (this loads the native library through JNA, inside Robolectric). */
@RunWith(RobolectricTestRunner::class)
@Config(sdk = [34])
class UuidsTest {
    @Test
    fun uuidsComeFromTheCore() {
        assertEquals(TEST_UUIDS, ShoalGattUuids.fromCore())
        val core = bluetoothUuids()
        assertEquals(TEST_UUIDS.service.toString(), core.service)
    }
}
