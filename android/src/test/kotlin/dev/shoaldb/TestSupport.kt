package dev.shoaldb

import kotlinx.coroutines.delay
import kotlinx.coroutines.withTimeoutOrNull
import kotlinx.serialization.json.Json
import kotlinx.serialization.json.JsonElement
import kotlinx.serialization.json.JsonObject
import kotlinx.serialization.json.jsonObject
import org.junit.jupiter.api.Assertions.fail
import java.nio.file.Path
import kotlin.time.Duration
import kotlin.time.Duration.Companion.seconds

/** Generous: the tests run on a slow shared 2-core machine. Only an upper bound, never a timing assertion. */
val PATIENCE: Duration = 30.seconds

/** The app secret every test store shares. */
const val SECRET = "kotlin test secret"

/** Shoal's log goes to java.util.logging (the test report's output) once per test JVM. */
private val loggerInstalled: Unit by lazy { Shoal.installLogger(JulLogger(), LogLevel.INFO) }

/**
 * A store in [dir] that never multicasts: mDNS is off, and it listens on loopback only when [listen] is set.
 */
suspend fun openStore(dir: Path, name: String, listen: Boolean = false, peers: List<String> = emptyList()): Store {
    loggerInstalled
    return Shoal.open(
        path = dir.resolve("$name.db").toString(),
        deviceName = name,
        appSecret = SECRET,
        sync = SyncConfig(listen = if (listen) "127.0.0.1:0" else null, mdns = false, peers = peers),
    )
}

/** Like [openStore], through [Shoal.openBlocking]: for tests that are not coroutines. */
fun openStoreBlocking(dir: Path, name: String): Store {
    loggerInstalled
    return Shoal.openBlocking(
        path = dir.resolve("$name.db").toString(),
        deviceName = name,
        appSecret = SECRET,
        sync = SyncConfig(mdns = false),
    )
}

/** Polls [check] every 50 ms until it returns non-null, failing after [patience] with [what] and the last state. */
suspend fun <T : Any> eventually(
    what: String,
    state: suspend () -> Any? = { null },
    patience: Duration = PATIENCE,
    check: suspend () -> T?,
): T =
    withTimeoutOrNull(patience) {
        while (true) {
            check()?.let { return@withTimeoutOrNull it }
            delay(50)
        }
        @Suppress("UNREACHABLE_CODE")
        null
    } ?: fail("gave up after $patience waiting for $what; state: ${state()}")

/** Parses one document (or any JSON text). */
fun json(text: String): JsonElement = Json.parseToJsonElement(text)

/** Parses one document. */
fun doc(text: String?): JsonObject = json(text ?: fail("no such document")).jsonObject

/** Runs [block], expecting it to throw a [T]; returns it. Works with suspend calls inside. */
inline fun <reified T : Throwable> expectThrows(block: () -> Unit): T {
    try {
        block()
    } catch (t: Throwable) {
        if (t is T) return t
        fail<Unit>("expected ${T::class.simpleName}, got $t", t)
    }
    fail<Unit>("expected ${T::class.simpleName}, nothing was thrown")
    throw AssertionError("unreachable")
}

/**
 * Runs [block] with two stores syncing over loopback: A listens on 127.0.0.1:0, B dials A's address. Both are shut
 * down afterwards.
 */
suspend fun <R> withSyncedPair(dir: Path, block: suspend (a: Store, b: Store) -> R): R {
    val a = openStore(dir, "A", listen = true)
    try {
        a.startSync()
        val address = a.listenAddress() ?: fail("A has no listen address while syncing")
        val b = openStore(dir, "B", peers = listOf(address))
        try {
            b.startSync()
            return block(a, b)
        } finally {
            b.shutdown()
        }
    } finally {
        a.shutdown()
    }
}
