package dev.shoaldb

import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.io.File
import java.net.ServerSocket
import java.nio.file.Path
import java.util.concurrent.TimeUnit
import kotlin.time.Duration.Companion.seconds

/**
 * Runs three MeshPeer processes (named like the cross-language mesh's peers, but all Kotlin) the way the mesh script
 * does — `java -cp <test.sh --mesh-classpath> dev.shoaldb.MeshPeerKt ...` — and checks their dumps and exit codes.
 */
class MeshPeerTest {
    @TempDir
    lateinit var dir: Path

    private fun freePort(): Int = ServerSocket(0).use { it.localPort }

    @Test
    fun `three mesh peers converge and dump the same documents`() = runBlocking<Unit> {
        val target = File("target").absoluteFile // surefire runs in the module directory
        val classpath = listOf(File(target, "classes").path, File(target, "test-classes").path) +
            File(target, "classpath.txt").readText().trim()
        val java = File(System.getProperty("java.home"), "bin/java").path
        val jnaPath = System.getProperty("jna.library.path")

        val ports = List(2) { freePort() }
        val peers = listOf(
            listOf("kotlin", "127.0.0.1:${ports[0]}"),
            listOf("swift", "127.0.0.1:${ports[1]}", "127.0.0.1:${ports[0]}"),
            listOf("rust", "127.0.0.1:0", "127.0.0.1:${ports[0]}", "127.0.0.1:${ports[1]}"),
        )
        val processes = peers.map { spec ->
            val db = dir.resolve("${spec[0]}.db").toString()
            ProcessBuilder(
                listOf(java, "-Djna.library.path=$jnaPath", "-cp", classpath.joinToString(File.pathSeparator),
                    "dev.shoaldb.MeshPeerKt", db, spec[0], SECRET) + spec.drop(1),
            ).redirectErrorStream(true).redirectOutput(dir.resolve("${spec[0]}.log").toFile()).start()
        }
        try {
            val dumps = peers.map { File(dir.toFile(), "${it[0]}.db.dump") }
            val logs = { peers.map { dir.resolve("${it[0]}.log").toFile().readText() } }
            eventually("every peer writes its dump", logs, patience = 100.seconds) {
                dumps.all { it.exists() }.takeIf { it }
            }
            // A peer dumps once every document is seen by kotlin and swift; the third peer's own marks
            // (seen_by_rust) may or may not have reached it by then, so they are left out of the comparison.
            val texts = dumps.map { it.readText().replace(",\"seen_by_rust\":true", "") }
            assertEquals(1, texts.toSet().size, "the dumps differ: $texts")
            val lines = texts[0].split("\n")
            assertEquals(4, lines.size, texts[0]) // three documents and the trailing newline
            assertEquals("", lines.last())
            for (name in listOf("kotlin", "swift", "rust")) {
                val d = doc(lines.dropLast(1).single { doc(it)["_id"].toString() == "\"$name\"" })
                assertEquals("\"$name\"", d["from"].toString())
                assertEquals("true", d["seen_by_kotlin"].toString())
                assertEquals("true", d["seen_by_swift"].toString())
            }
            peers.forEach { File(dir.toFile(), "${it[0]}.db.stop").createNewFile() }
            for ((i, p) in processes.withIndex()) {
                assertTrue(p.waitFor(PATIENCE.inWholeSeconds, TimeUnit.SECONDS), "peer ${peers[i][0]} did not exit")
                assertEquals(0, p.exitValue(), dir.resolve("${peers[i][0]}.log").toFile().readText())
            }
        } finally {
            processes.forEach { if (it.isAlive) it.destroyForcibly() }
        }
    }
}
