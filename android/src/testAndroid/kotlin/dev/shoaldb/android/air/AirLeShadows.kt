// Advertising and scanning on the simulated air: Robolectric shadows of BluetoothLeAdvertiser and BluetoothLeScanner
// backed by the phone's AirStack (`advertise` / `stop_advertise`, `scan` / `stop_scan` / `seen`).
package dev.shoaldb.android.air

import android.Manifest
import android.bluetooth.BluetoothManager
import android.bluetooth.le.AdvertiseCallback
import android.bluetooth.le.AdvertiseData
import android.bluetooth.le.AdvertiseSettings
import android.bluetooth.le.BluetoothLeAdvertiser
import android.bluetooth.le.BluetoothLeScanner
import android.bluetooth.le.ScanCallback
import android.bluetooth.le.ScanFilter
import android.bluetooth.le.ScanRecord
import android.bluetooth.le.ScanResult
import android.bluetooth.le.ScanSettings
import android.os.Build
import org.robolectric.annotation.Implementation
import org.robolectric.annotation.Implements
import org.robolectric.shadows.ShadowBluetoothLeAdvertiser
import org.robolectric.shadows.ShadowBluetoothLeScanner
import java.io.ByteArrayOutputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.util.UUID

/** A legacy advertising packet (and a scan response) holds at most 31 bytes. */
private const val MAX_LEGACY_ADVERTISING_BYTES = 31

/** Android ignores the 6th scan start of an app within 30 s ("scanning too frequently"). */
private const val SCAN_STARTS_KEPT = 5
private const val EXCESSIVE_SCANNING_PERIOD_MS = 30_000L

/** Whether the phone applies that rule: yes, unless `SHOAL_AIR_SCAN_LIMIT=off` (for drivers that must do without it). */
private val scanLimit: Boolean = System.getenv("SHOAL_AIR_SCAN_LIMIT")?.lowercase() !in setOf("off", "0", "false")

// ------------------------------------------------------------------------------------------------ the stack's part

/**
 * The phone's advertisement, as Android's advertiser keeps it: one advertising instance (the air carries one
 * advertisement per phone), the advertising data and the scan response merged into one `advertise` (a scanner sees
 * both, as an Android scanner merges the scan response into its `ScanRecord`).
 */
internal class AirAdvertising(private val stack: AirStack) {
    private var current: AdvertiseCallback? = null
    private var settingsInEffect: AdvertiseSettings? = null

    /** `advertise` messages not yet answered (`advertising`): whom to tell (null: stopped meanwhile, tell no one). */
    private val pending = ArrayDeque<AdvertiseCallback?>()

    fun start(settings: AdvertiseSettings, data: AdvertiseData, response: AdvertiseData?, callback: AdvertiseCallback) {
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.S && !stack.granted(Manifest.permission.BLUETOOTH_ADVERTISE)) {
            throw SecurityException("Need android.permission.BLUETOOTH_ADVERTISE permission")
        }
        val name = deviceName()
        val failure = when {
            totalBytes(data, settings.isConnectable, name) > MAX_LEGACY_ADVERTISING_BYTES -> AdvertiseCallback.ADVERTISE_FAILED_DATA_TOO_LARGE
            response != null && totalBytes(response, false, name) > MAX_LEGACY_ADVERTISING_BYTES ->
                AdvertiseCallback.ADVERTISE_FAILED_DATA_TOO_LARGE
            else -> null
        }
        synchronized(stack.lock) {
            val refused = when {
                current === callback -> AdvertiseCallback.ADVERTISE_FAILED_ALREADY_STARTED
                current != null -> AdvertiseCallback.ADVERTISE_FAILED_TOO_MANY_ADVERTISERS
                else -> failure
            }
            if (refused != null) {
                stack.post { callback.onStartFailure(refused) }
                return
            }
            current = callback
            settingsInEffect = settings
            val services = (data.serviceUuids.orEmpty() + response?.serviceUuids.orEmpty()).map { airUuid(it.uuid) }.distinct()
            val serviceData = (data.serviceData.orEmpty() + response?.serviceData.orEmpty()).entries
                .associate { (uuid, bytes) -> airUuid(uuid.uuid) to bytes }
            val advertisedName = if (data.includeDeviceName || response?.includeDeviceName == true) name else null
            pending.addLast(callback)
            stack.send("advertise", "services" to services, "service_data" to serviceData, "name" to advertisedName)
        }
    }

    fun stop(callback: AdvertiseCallback) {
        synchronized(stack.lock) {
            if (current !== callback) return
            current = null
            for (i in pending.indices) if (pending[i] === callback) pending[i] = null
            stack.send("stop_advertise")
        }
    }

    /** The air's answer to the oldest `advertise`. */
    fun onAdvertising(ok: Boolean, reason: String?) {
        synchronized(stack.lock) {
            val callback = pending.removeFirstOrNull() ?: return
            val settings = settingsInEffect
            if (ok) {
                stack.post { callback.onStartSuccess(settings) }
            } else {
                airLog("[air-phone ${stack.name}] the air refused the advertisement: $reason")
                if (current === callback) current = null
                stack.post { callback.onStartFailure(AdvertiseCallback.ADVERTISE_FAILED_INTERNAL_ERROR) }
            }
        }
    }

    private fun deviceName(): String? = try {
        stack.context.getSystemService(BluetoothManager::class.java).adapter.name
    } catch (_: Exception) {
        null
    }

    /** The bytes [data] takes in a legacy advertising packet, as Android counts them (`BluetoothLeAdvertiser.totalBytes`). */
    private fun totalBytes(data: AdvertiseData, flags: Boolean, name: String?): Int {
        var size = if (flags) 3 else 0
        val uuids = data.serviceUuids.orEmpty().map { it.uuid }
        val n16 = uuids.count(::is16Bit)
        val n32 = uuids.count(::is32Bit)
        val n128 = uuids.size - n16 - n32
        if (n16 > 0) size += 2 + 2 * n16
        if (n32 > 0) size += 2 + 4 * n32
        if (n128 > 0) size += 2 + 16 * n128
        for ((uuid, bytes) in data.serviceData.orEmpty()) size += 2 + uuidBytes(uuid.uuid).size + (bytes?.size ?: 0)
        val manufacturer = data.manufacturerSpecificData
        if (manufacturer != null) for (i in 0 until manufacturer.size()) size += 2 + 2 + (manufacturer.valueAt(i)?.size ?: 0)
        if (data.includeTxPowerLevel) size += 3
        if (data.includeDeviceName) size += 2 + (name?.length ?: 0)
        return size
    }
}

/**
 * The phone's scans, as Android's scanner keeps an app's: several callbacks at once, each with its filters and
 * settings; the air's one scan (`scan`) looks for what any of them wants (their service UUIDs, or anything when one
 * filters on something else or nothing), and each sighting (`seen`) becomes a [ScanResult] (a [ScanRecord] with the
 * flags, the service UUIDs, the service data and the name) given to every callback whose filters match it
 * (`ScanFilter.matches`). `CALLBACK_TYPE_ALL_MATCHES` reports each sighting (the air repeats them every 500 ms:
 * `duplicates`), `CALLBACK_TYPE_FIRST_MATCH` each device once per scan.
 *
 * Android's rules modelled: a callback already scanning gets `SCAN_FAILED_ALREADY_STARTED`; a 6th scan start of the
 * app within 30 s is silently ignored, as Android's `BluetoothLeScanner` does (it never reports anything, not even
 * `onScanFailed`; `SHOAL_AIR_SCAN_LIMIT=off` lifts the rule); on API 31+ scanning without `BLUETOOTH_SCAN` throws, before
 * API 31 a scan without the location permission reports nothing. Not modelled: batched results (`reportDelay` is
 * ignored: every result comes at once), `CALLBACK_TYPE_MATCH_LOST`, scans turned opportunistic after 30 minutes,
 * PendingIntent scans, signal strength (every sighting has the air's RSSI).
 */
internal class AirScanning(private val stack: AirStack) {
    private class Scan(val callback: ScanCallback, val filters: List<ScanFilter>, val settings: ScanSettings, val ignored: Boolean) {
        val reported = HashSet<String>()
    }

    private val scans = LinkedHashMap<ScanCallback, Scan>()
    private val starts = ArrayDeque<Long>()
    private var airScanning = false

    fun start(filters: List<ScanFilter>, settings: ScanSettings, callback: ScanCallback) {
        val sdk = Build.VERSION.SDK_INT
        if (sdk >= Build.VERSION_CODES.S && !stack.granted(Manifest.permission.BLUETOOTH_SCAN)) {
            throw SecurityException("Need android.permission.BLUETOOTH_SCAN permission")
        }
        val located = sdk >= Build.VERSION_CODES.S || stack.granted(Manifest.permission.ACCESS_FINE_LOCATION) ||
            (sdk < Build.VERSION_CODES.Q && stack.granted(Manifest.permission.ACCESS_COARSE_LOCATION))
        synchronized(stack.lock) {
            if (scans.containsKey(callback)) {
                stack.post { callback.onScanFailed(ScanCallback.SCAN_FAILED_ALREADY_STARTED) }
                return
            }
            val now = System.nanoTime() / 1_000_000
            while (starts.isNotEmpty() && now - starts.first() >= EXCESSIVE_SCANNING_PERIOD_MS) starts.removeFirst()
            val tooFrequent = scanLimit && starts.size >= SCAN_STARTS_KEPT
            if (tooFrequent) {
                airLog("[air-phone ${stack.name}] the app is scanning too frequently: Android ignores this scan")
            } else {
                starts.addLast(now)
            }
            if (!located) airLog("[air-phone ${stack.name}] no location permission: Android's scan reports nothing")
            scans[callback] = Scan(callback, filters.toList(), settings, ignored = tooFrequent || !located)
            update()
        }
    }

    fun stop(callback: ScanCallback) {
        synchronized(stack.lock) {
            if (scans.remove(callback) != null) update()
        }
    }

    /** Tells the air what the scans want. Under the stack's lock. */
    private fun update() {
        val active = scans.values.filter { !it.ignored }
        if (active.isEmpty()) {
            if (airScanning) stack.send("stop_scan")
            airScanning = false
            return
        }
        val filtered = active.all { s -> s.filters.isNotEmpty() && s.filters.all { it.serviceUuid != null && it.serviceUuidMask == null } }
        val services = if (filtered) active.flatMap { s -> s.filters.map { airUuid(it.serviceUuid!!.uuid) } }.distinct() else null
        val duplicates = active.any { it.settings.callbackType and ScanSettings.CALLBACK_TYPE_FIRST_MATCH == 0 }
        stack.send("scan", "services" to services, "duplicates" to duplicates)
        airScanning = true
    }

    /** A sighting: a [ScanResult] for every scan it matches. */
    fun onSeen(m: AirMessage) {
        val peer = m.string("peer") ?: return
        val services = m.strings("services").orEmpty().mapNotNull { parseAirUuid(it) }
        val data = m.byteMap("service_data").mapNotNull { (k, v) -> parseAirUuid(k)?.let { it to v } }
        val record = ScanRecord.parseFromBytes(advertisingBytes(services, data, m.string("name")))
        @Suppress("DEPRECATION")
        val result = ScanResult(stack.device(peer), record, m.int("rssi") ?: -60, System.nanoTime())
        synchronized(stack.lock) {
            for (scan in scans.values) {
                if (scan.ignored) continue
                if (scan.filters.isNotEmpty() && scan.filters.none { it.matches(result) }) continue
                val firstMatch = scan.settings.callbackType and ScanSettings.CALLBACK_TYPE_FIRST_MATCH != 0
                if (firstMatch && !scan.reported.add(peer)) continue
                val type = if (firstMatch) ScanSettings.CALLBACK_TYPE_FIRST_MATCH else ScanSettings.CALLBACK_TYPE_ALL_MATCHES
                val callback = scan.callback
                stack.post {
                    if (synchronized(stack.lock) { scans[callback] === scan }) callback.onScanResult(type, result)
                }
            }
        }
    }
}

/** A UUID's bytes in an advertisement: 2, 4 or 16 bytes, little-endian. */
private fun uuidBytes(uuid: UUID): ByteArray = when {
    is16Bit(uuid) -> ByteBuffer.allocate(2).order(ByteOrder.LITTLE_ENDIAN).putShort((uuid.mostSignificantBits ushr 32).toShort()).array()
    is32Bit(uuid) -> ByteBuffer.allocate(4).order(ByteOrder.LITTLE_ENDIAN).putInt((uuid.mostSignificantBits ushr 32).toInt()).array()
    else -> ByteBuffer.allocate(16).order(ByteOrder.LITTLE_ENDIAN)
        .putLong(uuid.leastSignificantBits).putLong(uuid.mostSignificantBits).array()
}

/** What a scanner receives: the flags, the service UUIDs, the service data and the name, as AD structures. */
private fun advertisingBytes(services: List<UUID>, data: List<Pair<UUID, ByteArray>>, name: String?): ByteArray {
    val out = ByteArrayOutputStream()
    fun field(type: Int, body: ByteArray) {
        if (body.size > 254) return // does not fit an AD structure
        out.write(body.size + 1)
        out.write(type)
        out.write(body)
    }
    field(0x01, byteArrayOf(0x06)) // LE general discoverable, no BR/EDR
    val s16 = services.filter(::is16Bit)
    val s32 = services.filter(::is32Bit)
    val s128 = services.filter { !is16Bit(it) && !is32Bit(it) }
    if (s16.isNotEmpty()) field(0x03, s16.flatMap { uuidBytes(it).asList() }.toByteArray())
    if (s32.isNotEmpty()) field(0x05, s32.flatMap { uuidBytes(it).asList() }.toByteArray())
    if (s128.isNotEmpty()) field(0x07, s128.flatMap { uuidBytes(it).asList() }.toByteArray())
    for ((uuid, bytes) in data) {
        val type = when {
            is16Bit(uuid) -> 0x16
            is32Bit(uuid) -> 0x20
            else -> 0x21
        }
        field(type, uuidBytes(uuid) + bytes)
    }
    if (name != null) field(0x09, name.toByteArray(Charsets.UTF_8))
    return out.toByteArray()
}

// ------------------------------------------------------------------------------------------------ the shadows

/**
 * `BluetoothLeScanner` on the air: `startScan` / `stopScan` with callbacks (see [AirScanning]); results on the
 * stack's binder thread.
 */
@Implements(BluetoothLeScanner::class)
class AirLeScannerShadow : ShadowBluetoothLeScanner() {
    @Implementation
    override fun startScan(filters: List<ScanFilter>?, settings: ScanSettings?, callback: ScanCallback?) {
        requireNotNull(callback) { "callback is null" }
        AirStack.current().scanning.start(filters.orEmpty(), settings ?: ScanSettings.Builder().build(), callback)
    }

    @Implementation
    override fun stopScan(callback: ScanCallback?) {
        if (callback != null) AirStack.current().scanning.stop(callback)
    }
}

/**
 * `BluetoothLeAdvertiser` on the air: `startAdvertising` (with or without a scan response) / `stopAdvertising` (see
 * [AirAdvertising]); `onStartSuccess` once the air advertises. Android's checks modelled: the 31-byte limit of each
 * packet (`ADVERTISE_FAILED_DATA_TOO_LARGE`), a callback already advertising (`ADVERTISE_FAILED_ALREADY_STARTED`),
 * one advertisement at a time (a second callback: `ADVERTISE_FAILED_TOO_MANY_ADVERTISERS`), `BLUETOOTH_ADVERTISE` on
 * API 31+. Not modelled: advertising sets and extended or periodic advertising, the advertising timeout, TX power,
 * non-connectable advertisements (every advertisement on the air accepts connections).
 */
@Implements(BluetoothLeAdvertiser::class)
class AirLeAdvertiserShadow : ShadowBluetoothLeAdvertiser() {
    @Implementation
    override fun startAdvertising(settings: AdvertiseSettings?, advertiseData: AdvertiseData?, callback: AdvertiseCallback?) {
        startAdvertising(settings, advertiseData, null, callback)
    }

    @Implementation
    protected fun startAdvertising(
        settings: AdvertiseSettings?,
        advertiseData: AdvertiseData?,
        scanResponse: AdvertiseData?,
        callback: AdvertiseCallback?,
    ) {
        requireNotNull(callback) { "callback cannot be null" }
        AirStack.current().advertising.start(
            settings ?: AdvertiseSettings.Builder().build(),
            advertiseData ?: AdvertiseData.Builder().build(),
            scanResponse,
            callback,
        )
    }

    @Implementation
    protected fun stopAdvertising(callback: AdvertiseCallback?) {
        requireNotNull(callback) { "callback cannot be null" }
        AirStack.current().advertising.stop(callback)
    }
}
