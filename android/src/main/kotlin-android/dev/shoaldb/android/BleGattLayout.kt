package dev.shoaldb.android

import android.bluetooth.BluetoothGattCharacteristic
import android.bluetooth.BluetoothGattDescriptor
import android.bluetooth.BluetoothGattService
import android.bluetooth.le.AdvertiseData
import android.bluetooth.le.AdvertiseSettings
import android.bluetooth.le.ScanFilter
import android.bluetooth.le.ScanSettings
import android.os.ParcelUuid
import dev.shoaldb.bluetoothUuids
import java.util.UUID

/** The UUIDs of Shoal's GATT service and characteristics (see `dev.shoaldb.bluetoothUuids`). */
internal data class ShoalGattUuids(val service: UUID, val rx: UUID, val tx: UUID, val psm: UUID) {
    companion object {
        /** The UUIDs the Rust core uses (calls into the native library). */
        fun fromCore(): ShoalGattUuids = bluetoothUuids().let {
            ShoalGattUuids(UUID.fromString(it.service), UUID.fromString(it.rx), UUID.fromString(it.tx), UUID.fromString(it.psm))
        }
    }
}

/**
 * What the radio builds from the UUIDs: the GATT service it serves, what it advertises and how it scans. Kept
 * apart from the radio so that tests can check each piece.
 */
internal object ShoalGattLayout {
    /** The Client Characteristic Configuration descriptor, through which a central subscribes to notifications. */
    val CCCD: UUID = UUID.fromString("00002902-0000-1000-8000-00805f9b34fb")

    /** The ATT MTU a central asks for (the largest there is). */
    const val REQUESTED_MTU = 517

    /** The ATT MTU before any exchange. */
    const val DEFAULT_ATT_MTU = 23

    /**
     * The Shoal service: RX (write without response: central → peripheral), TX (notify, with its CCCD:
     * peripheral → central) and PSM (read: the L2CAP PSM, u16 little-endian, 0 = none).
     */
    fun service(uuids: ShoalGattUuids): BluetoothGattService {
        val service = BluetoothGattService(uuids.service, BluetoothGattService.SERVICE_TYPE_PRIMARY)
        val rx = BluetoothGattCharacteristic(
            uuids.rx,
            BluetoothGattCharacteristic.PROPERTY_WRITE_NO_RESPONSE,
            BluetoothGattCharacteristic.PERMISSION_WRITE,
        )
        val tx = BluetoothGattCharacteristic(uuids.tx, BluetoothGattCharacteristic.PROPERTY_NOTIFY, 0)
        tx.addDescriptor(
            BluetoothGattDescriptor(CCCD, BluetoothGattDescriptor.PERMISSION_READ or BluetoothGattDescriptor.PERMISSION_WRITE),
        )
        val psm = BluetoothGattCharacteristic(
            uuids.psm,
            BluetoothGattCharacteristic.PROPERTY_READ,
            BluetoothGattCharacteristic.PERMISSION_READ,
        )
        service.addCharacteristic(rx)
        service.addCharacteristic(tx)
        service.addCharacteristic(psm)
        return service
    }

    /** Connectable legacy advertising without timeout; low latency in the foreground, balanced in the background. */
    fun advertiseSettings(foreground: Boolean): AdvertiseSettings = AdvertiseSettings.Builder()
        .setAdvertiseMode(
            if (foreground) AdvertiseSettings.ADVERTISE_MODE_LOW_LATENCY else AdvertiseSettings.ADVERTISE_MODE_BALANCED,
        )
        .setTxPowerLevel(AdvertiseSettings.ADVERTISE_TX_POWER_HIGH)
        .setConnectable(true)
        .setTimeout(0)
        .build()

    /**
     * The advertising packet: the flags and the 128-bit service UUID (21 of the 31 bytes), which scanners filter on.
     * The device name and TX power are left out to save room.
     */
    fun advertiseData(uuids: ShoalGattUuids): AdvertiseData = AdvertiseData.Builder()
        .setIncludeDeviceName(false)
        .setIncludeTxPowerLevel(false)
        .addServiceUuid(ParcelUuid(uuids.service))
        .build()

    /**
     * The scan response: [serviceData] as the service data of the Shoal service (2 + 16 + 12 = 30 of 31 bytes), or
     * `null` when there is none. It cannot share the advertising packet with the 128-bit service UUID (that would be
     * 3 + 18 + 30 = 51 bytes); Android's scanner merges the scan response into the `ScanRecord` it reports.
     */
    fun scanResponse(uuids: ShoalGattUuids, serviceData: ByteArray?): AdvertiseData? {
        if (serviceData == null || serviceData.isEmpty()) return null
        return AdvertiseData.Builder()
            .setIncludeDeviceName(false)
            .setIncludeTxPowerLevel(false)
            .addServiceData(ParcelUuid(uuids.service), serviceData)
            .build()
    }

    /** One filter: the Shoal service UUID (a filtered scan also keeps running with the screen off). */
    fun scanFilters(uuids: ShoalGattUuids): List<ScanFilter> =
        listOf(ScanFilter.Builder().setServiceUuid(ParcelUuid(uuids.service)).build())

    /** Every advertisement reported at once; low latency in the foreground, balanced in the background. */
    fun scanSettings(foreground: Boolean): ScanSettings = ScanSettings.Builder()
        .setScanMode(if (foreground) ScanSettings.SCAN_MODE_LOW_LATENCY else ScanSettings.SCAN_MODE_BALANCED)
        .setCallbackType(ScanSettings.CALLBACK_TYPE_ALL_MATCHES)
        .setMatchMode(ScanSettings.MATCH_MODE_AGGRESSIVE)
        .setNumOfMatches(ScanSettings.MATCH_NUM_MAX_ADVERTISEMENT)
        .setReportDelay(0)
        .build()

    /** The value of the PSM characteristic: [psm] as a u16 little-endian (0 when there is no L2CAP channel). */
    fun psmValue(psm: Int): ByteArray {
        val p = if (psm in 0..0xFFFF) psm else 0
        return byteArrayOf((p and 0xFF).toByte(), (p shr 8 and 0xFF).toByte())
    }

    /** The PSM in a PSM characteristic value; 0 (none) unless it is exactly 2 bytes. */
    fun parsePsm(value: ByteArray?): Int {
        if (value == null || value.size != 2) return 0
        return (value[0].toInt() and 0xFF) or ((value[1].toInt() and 0xFF) shl 8)
    }

    /** Whether a CCCD value turns notifications (or indications) on. */
    fun enablesNotifications(value: ByteArray?): Boolean =
        value != null && value.isNotEmpty() && (value[0].toInt() and 0x03) != 0
}
