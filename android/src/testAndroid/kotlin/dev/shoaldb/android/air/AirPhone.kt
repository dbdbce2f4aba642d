// The Android phone program of the simulated air (core/air/PROTOCOL.md, "Phone drivers"): one Android phone, run by
// a test driver through the air server. The shipped AndroidBluetoothRadio and the real core (the host-built library
// through JNA) run on Robolectric, whose Bluetooth framework classes are this package's shadows, speaking the air's
// protocol. Started as
//
//   <command> <air address> <phone name>
//
// where `bindings/kotlin/test.sh --air-phone-command` prints <command> (java ... AirPhoneMainKt, see AirPhoneMain.kt).
// The program joins the air as the Android phone <phone name> (`hello`: platform android, ATT MTU 517) and runs the
// commands the driver sends it, one at a time, in order: "open" (a fresh store in a new directory, Bluetooth its only
// transport: AndroidBluetoothRadio as an app makes it), "put", "notes", "attach", "attachment", "close", "quit". It
// exits when told to quit (0) or when the air closes its connection (1). Progress goes to stderr.
//
// Stores of every phone program use one app secret, `$SHOAL_AIR_SECRET` (default "shoal air", as the iOS phone
// program), so that they sync. `SHOAL_AIR_SDK=28` runs the phone as Android 9 (no L2CAP, the pre-API 33 calls);
// the default is Android 14 (API 34). `SHOAL_LOG` (error, warn, info, debug, trace; default warn) is the level of the
// core's log; `SHOAL_AIR_DEBUG=1` adds every line to and from the air and the radio's debug log;
// `SHOAL_AIR_SCAN_LIMIT=off` lifts Android's limit of 5 scan starts per 30 s (see AirScanning), on by default.
package dev.shoaldb.android.air

import android.bluetooth.BluetoothManager
import android.os.Build
import dev.shoaldb.LogLevel
import dev.shoaldb.Shoal
import dev.shoaldb.ShoalLogger
import dev.shoaldb.Store
import dev.shoaldb.SyncConfig
import dev.shoaldb.android.AndroidBluetoothRadio
import dev.shoaldb.android.ShoalBluetoothPermissions
import dev.shoaldb.fetchAttachment
import dev.shoaldb.put
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.cancel
import kotlinx.coroutines.launch
import kotlinx.coroutines.runBlocking
import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonNull
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import org.junit.Assert.fail
import org.junit.Assume.assumeTrue
import org.junit.Test
import org.junit.runner.RunWith
import org.robolectric.RobolectricTestRunner
import org.robolectric.RuntimeEnvironment
import org.robolectric.Shadows.shadowOf
import org.robolectric.annotation.Config
import org.robolectric.shadow.api.Shadow
import org.robolectric.shadows.ShadowBluetoothAdapter
import org.robolectric.shadows.ShadowLog
import java.io.ByteArrayOutputStream
import java.io.File
import java.io.OutputStream
import java.io.PrintStream
import java.nio.file.Files
import java.util.Base64
import java.util.concurrent.ConcurrentHashMap

/** The system properties through which AirPhoneMain hands the program its arguments. */
internal const val AIR_ADDRESS_PROPERTY = "shoal.air.address"
internal const val AIR_PHONE_PROPERTY = "shoal.air.phone"

/** The app secret of every phone on the air. */
private val airSecret: String = System.getenv("SHOAL_AIR_SECRET")?.takeIf { it.isNotEmpty() } ?: "shoal air"

/**
 * The phone program as a Robolectric test, so that the framework classes are Android's with this package's
 * Bluetooth shadows. It runs only when AirPhoneMain set the air's address and the phone's name; in Maven's test run
 * (no such properties) it is skipped.
 */
abstract class AirPhoneRun : OnTheAir() {
    @Test
    fun runPhone() {
        val address = System.getProperty(AIR_ADDRESS_PROPERTY)
        val name = System.getProperty(AIR_PHONE_PROPERTY)
        assumeTrue("runs only as the air's phone program (AirPhoneMain)", address != null && name != null)
        if (!AirPhoneProgram(address!!, name!!).run()) fail("the air closed the connection")
    }
}

/** An Android 14 (API 34) phone on the air. */
@RunWith(RobolectricTestRunner::class)
@Config(sdk = [34])
class AirPhone : AirPhoneRun()

/** An Android 9 (API 28) phone on the air: GATT only (no L2CAP before API 29), the pre-API 33 calls. */
@RunWith(RobolectricTestRunner::class)
@Config(sdk = [28])
class AirPhoneApi28 : AirPhoneRun()

/**
 * Makes this process the Android phone [name] on the air at [air]: an app granted what it asks for
 * (`ShoalBluetoothPermissions.required()`), Bluetooth on, the adapter's address the one the air gave the phone.
 */
internal fun joinAirAsAndroidPhone(air: String, name: String): AirStack {
    val app = RuntimeEnvironment.getApplication()
    shadowOf(app).grantPermissions(*ShoalBluetoothPermissions.required())
    val stack = AirStack.join(air, name)
    val adapter = app.getSystemService(BluetoothManager::class.java).adapter
    Shadow.extract<ShadowBluetoothAdapter>(adapter).apply {
        setEnabled(true)
        setAddress(stack.address)
    }
    @Suppress("MissingPermission")
    adapter.setName(name)
    return stack
}

/** The phone's state between commands. Used by the one thread that runs the commands. */
internal class AirPhoneProgram(private val air: String, private val name: String) {
    private val started = System.nanoTime()
    private val app = RuntimeEnvironment.getApplication()
    private var store: Store? = null
    private var dir: File? = null

    /** Attachments whose download was asked for and has not ended, by hash. */
    private val fetching = ConcurrentHashMap.newKeySet<String>()
    private val background = CoroutineScope(SupervisorJob() + Dispatchers.IO)

    fun log(message: String) {
        airLog("[air-phone %s %7.2fs] %s".format(name, (System.nanoTime() - started) / 1e9, message))
    }

    /** Joins the air and runs the commands: true when told to quit, false when the air closed the connection. */
    fun run(): Boolean {
        ShadowLog.stream = PrintStream(LogFilter { log(it) }, true)
        Shoal.installLogger(CoreLogger(), coreLogLevel())
        val stack = joinAirAsAndroidPhone(air, name)
        log("on the air at $air as ${stack.address} (Android API ${Build.VERSION.SDK_INT})")
        try {
            while (true) {
                val command = stack.nextCommand() ?: break
                if (runCommand(stack, command)) return true
                ShadowLog.clear() // ShadowLog keeps every line: do not let a long run hoard them
            }
            closeStore()
            return false
        } finally {
            background.cancel()
            stack.leave()
        }
    }

    /** Runs one `do` and answers it with `done`; true if the program is to exit now. */
    private fun runCommand(stack: AirStack, command: AirMessage): Boolean {
        val id = command.fields["id"]
        val cmd = command.string("cmd") ?: ""
        val answer = try {
            runBlocking { execute(cmd, command) } + ("ok" to true)
        } catch (t: Throwable) {
            log("$cmd failed: $t")
            mapOf("ok" to false, "error" to t.toString())
        }
        stack.done(id, answer)
        return cmd == "quit"
    }

    private suspend fun execute(cmd: String, command: AirMessage): Map<String, Any?> = when (cmd) {
        "open" -> {
            open(useL2cap = command.bool("l2cap") ?: true)
            emptyMap()
        }
        "put" -> {
            val doc = argument("doc", command)
            val text = argument("text", command)
            openStore().collection("notes").put(doc, "text" to text)
            emptyMap()
        }
        "notes" -> {
            val notes = LinkedHashMap<String, JsonElement>()
            for (json in openStore().collection("notes").all()) {
                val doc = Json.parseToJsonElement(json) as? JsonObject ?: continue
                val docId = (doc["_id"] as? JsonPrimitive)?.content ?: continue
                notes[docId] = doc["text"] ?: JsonNull
            }
            mapOf("notes" to notes)
        }
        "attach" -> {
            val doc = argument("doc", command)
            val bytes = try {
                Base64.getDecoder().decode(argument("bytes", command))
            } catch (_: IllegalArgumentException) {
                throw IllegalArgumentException("attach: bytes is not base64")
            }
            val store = openStore()
            val token = store.putAttachment(bytes, emptyMap())
            store.collection("files").put(doc, "blob" to token)
            emptyMap()
        }
        "attachment" -> mapOf("bytes" to attachment(argument("doc", command)))
        "close", "quit" -> {
            closeStore()
            emptyMap()
        }
        else -> throw IllegalArgumentException("unknown command \"$cmd\"")
    }

    private fun argument(key: String, command: AirMessage): String =
        command.string(key) ?: throw IllegalArgumentException("missing \"$key\"")

    private fun openStore(): Store = store ?: throw IllegalStateException("no store open (send \"open\" first)")

    /**
     * A fresh store in a new directory (a new identity), syncing over Bluetooth only; replaces an open one.
     * [useL2cap] false: the radio keeps every connection on GATT.
     */
    private suspend fun open(useL2cap: Boolean) {
        closeStore()
        val dir = Files.createTempDirectory("air-phone-$name-").toFile()
        this.dir = dir
        val store = Shoal.open(
            File(dir, "$name.db").path,
            name,
            airSecret,
            SyncConfig(listen = null, mdns = false, peers = emptyList()),
        )
        try {
            // As an app does it (see AndroidBluetoothRadio's documentation).
            store.setBluetooth(AndroidBluetoothRadio(app, useL2cap))
            store.startSync()
        } catch (t: Throwable) {
            store.shutdown()
            throw t
        }
        this.store = store
        log("opened a store in $dir as device ${store.deviceId().take(16)}…")
    }

    /**
     * The bytes of the attachment in field "blob" of document [doc] of "files", base64, if they are here; else
     * null, and their download is asked for (once: again only after an earlier download ended without them).
     */
    private suspend fun attachment(doc: String): String? {
        val store = openStore()
        val token = store.collection("files").attachment(doc, "blob") ?: return null
        if (store.hasAttachment(token)) return Base64.getEncoder().encodeToString(store.attachmentBytes(token))
        val hash = token.hash
        if (fetching.add(hash)) {
            background.launch {
                try {
                    store.fetchAttachment(token)
                } catch (t: Throwable) {
                    log("fetching ${hash.take(12)}: $t")
                } finally {
                    fetching.remove(hash)
                }
            }
        }
        return null
    }

    /** Stops sync and closes the store, if one is open, and removes its directory. */
    private fun closeStore() {
        val store = this.store ?: return
        this.store = null
        try {
            runBlocking { store.stopSync() }
        } catch (t: Throwable) {
            log("stopping sync: $t")
        }
        store.shutdown()
        dir?.deleteRecursively()
        dir = null
        log("closed the store")
    }

    /** The core's log, on stderr with the phone's name. */
    private inner class CoreLogger : ShoalLogger {
        override fun log(level: LogLevel, target: String, message: String) {
            this@AirPhoneProgram.log("core $level $target: $message")
        }
    }

    private fun coreLogLevel(): LogLevel = when (System.getenv("SHOAL_LOG")?.lowercase()) {
        "error" -> LogLevel.ERROR
        "info" -> LogLevel.INFO
        "debug" -> LogLevel.DEBUG
        "trace" -> LogLevel.TRACE
        else -> LogLevel.WARN
    }
}

/**
 * Robolectric's log stream (`ShadowLog.stream`, lines `X/Tag: message`) filtered to the radio's tag (`ShoalBLE`):
 * info and above, debug too with `SHOAL_AIR_DEBUG`; stack traces follow the line they belong to.
 */
private class LogFilter(private val emit: (String) -> Unit) : OutputStream() {
    private val line = ByteArrayOutputStream()
    private var keeping = false
    private val entry = Regex("""([VDIWEA])/([^:\s]+): """)

    @Synchronized
    override fun write(b: Int) {
        if (b == '\n'.code) flushLine() else line.write(b)
    }

    @Synchronized
    override fun write(b: ByteArray, off: Int, len: Int) {
        for (i in off until off + len) write(b[i].toInt() and 0xFF)
    }

    private fun flushLine() {
        val text = line.toString(Charsets.UTF_8)
        line.reset()
        val match = entry.find(text)
        if (match != null && match.range.first <= 16) {
            val level = match.groupValues[1]
            keeping = match.groupValues[2] == "ShoalBLE" && (airDebug || level !in setOf("V", "D"))
            if (keeping) emit("radio $level: ${text.substring(match.range.last + 1)}")
        } else if (keeping) {
            emit("radio   $text")
        }
    }
}
