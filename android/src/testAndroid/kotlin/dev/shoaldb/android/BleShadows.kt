package dev.shoaldb.android

import android.bluetooth.BluetoothDevice
import android.bluetooth.BluetoothGatt
import android.bluetooth.BluetoothGattCharacteristic
import android.bluetooth.BluetoothGattDescriptor
import android.bluetooth.BluetoothSocket
import android.bluetooth.BluetoothGattServer
import android.bluetooth.BluetoothStatusCodes
import android.bluetooth.le.AdvertiseCallback
import android.bluetooth.le.AdvertiseData
import android.bluetooth.le.AdvertiseSettings
import android.bluetooth.le.BluetoothLeAdvertiser
import android.os.Build
import org.robolectric.annotation.Implementation
import org.robolectric.annotation.Implements
import org.robolectric.annotation.RealObject
import org.robolectric.shadow.api.Shadow
import org.robolectric.shadows.ShadowBluetoothLeAdvertiser
import org.robolectric.util.ReflectionHelpers.ClassParameter
import org.robolectric.shadows.ShadowBluetoothDevice
import org.robolectric.shadows.ShadowBluetoothGatt
import org.robolectric.shadows.ShadowBluetoothGattServer
import java.util.concurrent.CopyOnWriteArrayList

/**
 * A GATT client whose writes behave like the OS's: a write is accepted (or refused as busy) and completes later,
 * when the test calls `onCharacteristicWrite` (Robolectric's own shadow completes every write at once).
 */
@Implements(BluetoothGatt::class)
open class ReadableGattShadow : ShadowBluetoothGatt() {
    @field:RealObject
    lateinit var realGatt: BluetoothGatt

    /** Reads answer at once with the characteristic's value (through the API 33 callback where it exists). */
    @Implementation
    protected fun readCharacteristic(characteristic: BluetoothGattCharacteristic): Boolean {
        val callback = gattCallback ?: return false
        if (characteristic.service == null || characteristic.properties and BluetoothGattCharacteristic.PROPERTY_READ == 0) return false
        @Suppress("DEPRECATION")
        val value = characteristic.value ?: ByteArray(0)
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.TIRAMISU) {
            callback.onCharacteristicRead(realGatt, characteristic, value, BluetoothGatt.GATT_SUCCESS)
        } else {
            @Suppress("DEPRECATION")
            callback.onCharacteristicRead(realGatt, characteristic, BluetoothGatt.GATT_SUCCESS)
        }
        readCount++
        return true
    }

    companion object {
        /** Characteristic reads answered since the last reset. */
        @Volatile var readCount = 0
    }
}

/**
 * A GATT client whose writes behave like the OS's: a write is accepted (or refused as busy) and completes later,
 * when the test calls `onCharacteristicWrite` (Robolectric's own shadow completes every write at once).
 */
@Implements(BluetoothGatt::class)
class ControlledGattShadow : ReadableGattShadow() {
    companion object {
        /** Every value handed to a write, in order. */
        val written = CopyOnWriteArrayList<ByteArray>()

        /** The answers to the next writes (`BluetoothStatusCodes`); SUCCESS when empty. */
        val answers = ArrayDeque<Int>()

        /** When set, descriptor writes are accepted and complete only when the test calls `onDescriptorWrite`. */
        @Volatile var holdDescriptorWrites = false

        fun reset() {
            written.clear()
            answers.clear()
            holdDescriptorWrites = false
            ReadableGattShadow.readCount = 0
        }
    }

    @Implementation(minSdk = Build.VERSION_CODES.TIRAMISU)
    override fun writeDescriptor(descriptor: BluetoothGattDescriptor, value: ByteArray): Int {
        if (!holdDescriptorWrites) return super.writeDescriptor(descriptor, value)
        @Suppress("DEPRECATION")
        descriptor.value = value
        return BluetoothStatusCodes.SUCCESS
    }

    @Implementation(minSdk = Build.VERSION_CODES.TIRAMISU)
    override fun writeCharacteristic(characteristic: BluetoothGattCharacteristic, value: ByteArray, writeType: Int): Int {
        written.add(value.copyOf())
        return answers.removeFirstOrNull() ?: BluetoothStatusCodes.SUCCESS
    }

    @Implementation
    @Suppress("DEPRECATION")
    override fun writeCharacteristic(characteristic: BluetoothGattCharacteristic): Boolean {
        written.add(characteristic.value.copyOf())
        return (answers.removeFirstOrNull() ?: BluetoothStatusCodes.SUCCESS) == BluetoothStatusCodes.SUCCESS
    }
}

/**
 * A GATT server whose notifications behave like the OS's: accepted (or refused as busy), confirmed later by
 * `onNotificationSent` from the test. (Robolectric's server is not registered with a Bluetooth service, so the real
 * `notifyCharacteristicChanged` always fails.)
 */
@Implements(BluetoothGattServer::class)
class NotifyingGattServerShadow : ShadowBluetoothGattServer() {
    companion object {
        /** Every notification (device address, value), in order. */
        val notified = CopyOnWriteArrayList<Pair<String, ByteArray>>()

        /** The answers to the next notifications (`BluetoothStatusCodes`); SUCCESS when empty. */
        val answers = ArrayDeque<Int>()

        fun reset() {
            notified.clear()
            answers.clear()
        }
    }

    @Implementation(minSdk = Build.VERSION_CODES.TIRAMISU)
    protected fun notifyCharacteristicChanged(
        device: BluetoothDevice,
        characteristic: BluetoothGattCharacteristic,
        confirm: Boolean,
        value: ByteArray,
    ): Int {
        notified.add(device.address to value.copyOf())
        return answers.removeFirstOrNull() ?: BluetoothStatusCodes.SUCCESS
    }

    @Implementation
    @Suppress("DEPRECATION")
    protected fun notifyCharacteristicChanged(
        device: BluetoothDevice,
        characteristic: BluetoothGattCharacteristic,
        confirm: Boolean,
    ): Boolean {
        notified.add(device.address to characteristic.value.copyOf())
        return (answers.removeFirstOrNull() ?: BluetoothStatusCodes.SUCCESS) == BluetoothStatusCodes.SUCCESS
    }
}

/** Records what the radio advertises (Robolectric keeps no trace of a scan response). */
@Implements(BluetoothLeAdvertiser::class)
class RecordingAdvertiserShadow : ShadowBluetoothLeAdvertiser() {
    @field:RealObject
    lateinit var realAdvertiser: BluetoothLeAdvertiser

    companion object {
        /** Each start: settings, advertising data, scan response (or null). (Android's 3-argument call lands here.) */
        val started = CopyOnWriteArrayList<Triple<AdvertiseSettings, AdvertiseData, AdvertiseData?>>()
    }

    @Implementation
    protected fun startAdvertising(
        settings: AdvertiseSettings,
        advertiseData: AdvertiseData,
        scanResponse: AdvertiseData?,
        callback: AdvertiseCallback,
    ) {
        started.add(Triple(settings, advertiseData, scanResponse))
        Shadow.directlyOn<Unit, BluetoothLeAdvertiser>(
            realAdvertiser,
            BluetoothLeAdvertiser::class.java,
            "startAdvertising",
            ClassParameter.from(AdvertiseSettings::class.java, settings),
            ClassParameter.from(AdvertiseData::class.java, advertiseData),
            ClassParameter.from(AdvertiseData::class.java, scanResponse),
            ClassParameter.from(AdvertiseCallback::class.java, callback),
        )
    }
}

/** A device whose L2CAP channels never connect (the socket is closed before `connect`, which then throws). */
@Implements(BluetoothDevice::class)
class FailingL2capDeviceShadow : ShadowBluetoothDevice() {
    @Implementation(minSdk = Build.VERSION_CODES.Q)
    override fun createInsecureL2capChannel(psm: Int): BluetoothSocket =
        super.createInsecureL2capChannel(psm).also { it.close() }
}
