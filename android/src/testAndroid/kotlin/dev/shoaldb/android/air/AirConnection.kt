// The wire under the simulated air: one TCP connection to the air server (`shoal-air`, core/air), carrying the JSON
// lines of core/air/PROTOCOL.md. Test-only, like everything in this package.
package dev.shoaldb.android.air

import kotlinx.serialization.json.JsonArray
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonNull
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.JsonPrimitive
import kotlinx.serialization.json.booleanOrNull
import kotlinx.serialization.json.intOrNull
import kotlinx.serialization.json.Json
import java.io.BufferedReader
import java.io.Closeable
import java.io.IOException
import java.io.InputStreamReader
import java.io.OutputStream
import java.net.InetSocketAddress
import java.net.Socket
import java.util.Base64

/** Whether to print every line to and from the air on stderr (`SHOAL_AIR_DEBUG=1`, as the iOS phone program). */
internal val airDebug: Boolean = System.getenv("SHOAL_AIR_DEBUG").let { !it.isNullOrEmpty() && it != "0" }

/** Prints one line of the phone program's log on stderr. */
internal fun airLog(text: String) {
    System.err.println(text)
}

/** One message of the protocol: a JSON object with `"op"`. */
@JvmInline
internal value class AirMessage(val fields: JsonObject) {
    val op: String
        get() = string("op") ?: ""

    fun string(key: String): String? = (fields[key] as? JsonPrimitive)?.takeIf { it.isString }?.content

    fun int(key: String): Int? = (fields[key] as? JsonPrimitive)?.let { it.intOrNull ?: it.content.toDoubleOrNull()?.toInt() }

    fun bool(key: String): Boolean? = (fields[key] as? JsonPrimitive)?.booleanOrNull

    /** A byte string (standard base64); null when missing or not base64. */
    fun bytes(key: String): ByteArray? = string(key)?.let {
        try {
            Base64.getDecoder().decode(it)
        } catch (_: IllegalArgumentException) {
            null
        }
    }

    /** An array of strings (`services`); null when missing or `null`. */
    fun strings(key: String): List<String>? =
        (fields[key] as? JsonArray)?.mapNotNull { (it as? JsonPrimitive)?.takeIf { p -> p.isString }?.content }

    /** A JSON object of byte strings (`service_data`); empty when missing. */
    fun byteMap(key: String): Map<String, ByteArray> {
        val obj = fields[key] as? JsonObject ?: return emptyMap()
        return obj.mapNotNull { (k, v) ->
            val text = (v as? JsonPrimitive)?.takeIf { it.isString }?.content ?: return@mapNotNull null
            try {
                k to Base64.getDecoder().decode(text)
            } catch (_: IllegalArgumentException) {
                null
            }
        }.toMap()
    }

    override fun toString(): String = fields.toString()
}

/**
 * A JSON value for [air]: strings, numbers, booleans, `null`, byte arrays (standard base64), lists, string-keyed
 * maps and JSON elements.
 */
internal fun jsonOf(value: Any?): JsonElement = when (value) {
    null -> JsonNull
    is JsonElement -> value
    is String -> JsonPrimitive(value)
    is Number -> JsonPrimitive(value)
    is Boolean -> JsonPrimitive(value)
    is ByteArray -> JsonPrimitive(Base64.getEncoder().encodeToString(value))
    is AirMessage -> value.fields
    is Iterable<*> -> JsonArray(value.map { jsonOf(it) })
    is Map<*, *> -> JsonObject(value.entries.associate { (k, v) -> k.toString() to jsonOf(v) })
    else -> throw IllegalArgumentException("not a JSON value: ${value::class.qualifiedName}")
}

/** The message `{"op": op, ...fields}`. */
internal fun air(op: String, vararg fields: Pair<String, Any?>): AirMessage =
    AirMessage(JsonObject(linkedMapOf<String, JsonElement>("op" to JsonPrimitive(op)).apply { fields.forEach { (k, v) -> put(k, jsonOf(v)) } }))

/**
 * A TCP connection carrying JSON lines. [send] may be called from any thread; [read] from one reader at a time.
 *
 * @param address `host:port` (an IPv6 host in brackets).
 * @param label what the debug log calls this connection (the phone's name).
 */
internal class AirConnection(address: String, private val label: String) : Closeable {
    private val socket: Socket
    private val output: OutputStream
    private val input: BufferedReader
    private val writeLock = Any()

    init {
        val colon = address.lastIndexOf(':')
        require(colon > 0) { "air address $address: want host:port" }
        val host = address.substring(0, colon).removePrefix("[").removeSuffix("]")
        val port = address.substring(colon + 1).toIntOrNull() ?: throw IllegalArgumentException("air address $address: bad port")
        socket = Socket()
        socket.tcpNoDelay = true
        socket.connect(InetSocketAddress(host, port), 10_000)
        output = socket.getOutputStream()
        input = BufferedReader(InputStreamReader(socket.getInputStream(), Charsets.UTF_8), 1 shl 16)
    }

    /** Sends one message; false when the connection is gone (the phone has left the air: nothing more to do). */
    fun send(message: AirMessage): Boolean {
        val line = message.fields.toString()
        if (airDebug) airLog("[air $label] → $line")
        return try {
            synchronized(writeLock) {
                output.write((line + "\n").toByteArray(Charsets.UTF_8))
                output.flush()
            }
            true
        } catch (e: IOException) {
            if (airDebug) airLog("[air $label] cannot send: $e")
            false
        }
    }

    /** The next message; null when the connection has ended. Lines that are not JSON objects are logged and skipped. */
    fun read(): AirMessage? {
        while (true) {
            val line = try {
                input.readLine()
            } catch (_: IOException) {
                null
            } ?: return null
            if (line.isBlank()) continue
            if (airDebug) airLog("[air $label] ← $line")
            val element = try {
                Json.parseToJsonElement(line)
            } catch (e: Exception) {
                airLog("[air $label] not JSON: $line ($e)")
                continue
            }
            if (element is JsonObject) return AirMessage(element)
            airLog("[air $label] not a JSON object: $line")
        }
    }

    override fun close() {
        try {
            socket.close()
        } catch (_: IOException) {
        }
    }
}
