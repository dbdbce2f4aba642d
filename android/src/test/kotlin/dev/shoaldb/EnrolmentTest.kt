package dev.shoaldb

import kotlinx.coroutines.delay
import kotlinx.coroutines.runBlocking
import org.junit.jupiter.api.Assertions.assertEquals
import org.junit.jupiter.api.Assertions.assertFalse
import org.junit.jupiter.api.Assertions.assertNull
import org.junit.jupiter.api.Assertions.assertTrue
import org.junit.jupiter.api.Test
import org.junit.jupiter.api.io.TempDir
import java.nio.file.Path
import java.util.Collections
import kotlin.time.Duration.Companion.days

/** Device identity: stores enrolled by an app authority sync with certificates; strangers and the revoked do not. */
class EnrolmentTest {
    @TempDir
    lateinit var dir: Path

    /** A store with no app secret (certificates only), listening on loopback when [listen]. */
    private suspend fun open(name: String, listen: Boolean = false): Store =
        Shoal.open(
            path = dir.resolve("$name.db").toString(),
            deviceName = name,
            sync = SyncConfig(listen = if (listen) "127.0.0.1:0" else null, mdns = false),
        )

    /** Enrols [store] with [authority]: request → certificate with [grants] → install. */
    private suspend fun enrol(
        store: Store,
        name: String,
        authority: Authority,
        serial: Long,
        grants: List<String> = listOf("read *", "write *"),
    ): CertificateInfo {
        val request = store.enrolmentRequest(name)
        val certificate = authority.issue(request, serial, grants, validFor = 365.days)
        val info = store.installCertificate(authority.publicKey(), certificate)
        assertEquals(name, info.name)
        assertEquals(serial.toULong(), info.serial)
        assertEquals(store.deviceId(), info.deviceId)
        assertEquals(grants, info.grants)
        assertEquals(info, store.certificate())
        return info
    }

    /** Installs a logger that keeps every message (and logs it as usual); the test puts `JulLogger` back. */
    private fun capturingLog(): MutableList<String> {
        val logged = Collections.synchronizedList(mutableListOf<String>())
        Shoal.installLogger(
            object : ShoalLogger {
                override fun log(level: LogLevel, target: String, message: String) {
                    logged.add(message)
                    JulLogger().log(level, target, message)
                }
            },
            LogLevel.INFO,
        )
        return logged
    }

    @Test
    fun `two enrolled stores sync, another authority's and a revoked one get nothing`() = runBlocking<Unit> {
        val logged = capturingLog()
        val authority = Authority.generate()
        // The authority's key survives a round trip (an admin tool keeps it in a keystore).
        val sameAuthority = Authority.fromPrivateKey(authority.privateKey())
        assertEquals(authority.publicKey(), sameAuthority.publicKey())
        val other = Authority.generate()

        val a = open("A", listen = true)
        val b = open("B")
        val revoked = open("Revoked")
        val stranger = open("Stranger")
        val stores = listOf(a, b, revoked, stranger)
        try {
            enrol(a, "A", authority, 1)
            enrol(b, "B", sameAuthority, 2)
            val revokedInfo = enrol(revoked, "Revoked", authority, 3)
            enrol(stranger, "Stranger", other, 1)

            // A takes in the authority's revocation list before it syncs.
            val list = authority.revoke(1uL, listOf(Revocation.Device(revokedInfo.signingKey)))
            assertTrue(a.installRevocations(list))
            assertFalse(a.installRevocations(list), "the same list again is no news")
            expectThrows<ShoalException.Certificate> { a.installRevocations(other.revoke(2uL, emptyList())) }

            a.startSync()
            val address = a.listenAddress() ?: error("A has no listen address")
            a.collection("tasks").upsert("""{"_id": "t1", "title": "from A"}""")
            b.connect(address)
            b.startSync()
            val tasksB = b.collection("tasks")
            eventually("B receives A's document over a certified link", { b.peers() }) { tasksB.get("t1") }
            eventually("B and A seeing each other", { b.peers() to a.peers() }) {
                true.takeIf { b.peers().map { it.name } == listOf("A") && a.peers().map { it.name } == listOf("B") }
            }

            // The revoked store and the other authority's store dial A too.
            for (store in listOf(revoked, stranger)) {
                store.collection("tasks").upsert("""{"_id": "from-${store.deviceId()}", "n": 1}""")
                store.connect(address)
                store.startSync()
            }
            eventually("A refusing the revoked store's certificate", { logged.takeLast(5) }) {
                synchronized(logged) { logged.firstOrNull { it.contains("revoked: device key") } }
            }
            delay(2_000) // time for the stranger's dials too: no link comes up
            for (store in listOf(revoked, stranger)) {
                assertEquals(emptyList<Peer>(), store.peers(), "${store.deviceId()} has no link")
                assertNull(store.collection("tasks").get("t1"), "nothing of A's reached it")
            }
            assertEquals(listOf("B"), a.peers().map { it.name }, "A is linked with B only")
            assertEquals(1, a.collection("tasks").all().size, "nothing of theirs reached A")
        } finally {
            stores.forEach { it.shutdown() }
            Shoal.installLogger(JulLogger(), LogLevel.INFO)
        }
    }

    @Test
    fun `a roster refuses a device certified before it that it does not list`() = runBlocking<Unit> {
        val logged = capturingLog()
        val authority = Authority.generate()
        val a = open("A", listen = true)
        val member = open("Member")
        val outsider = open("Outsider")
        val newcomer = open("Newcomer")
        val stores = listOf(a, member, outsider, newcomer)
        try {
            val aInfo = enrol(a, "A", authority, 1)
            val memberInfo = enrol(member, "Member", authority, 2)
            val outsiderInfo = enrol(outsider, "Outsider", authority, 3)
            // The roster closes the membership as of now: A and Member are on it; Outsider, certified before it too,
            // is not.
            val untilMs = System.currentTimeMillis().toULong()
            for (info in listOf(aInfo, memberInfo, outsiderInfo)) {
                assertTrue(info.notBeforeMs <= untilMs, "${info.name} is certified before the roster")
            }
            for (bad in listOf("xyz", memberInfo.signingKey.dropLast(1), memberInfo.signingKey + "00")) {
                expectThrows<ShoalException.InvalidArgument> {
                    authority.revoke(1uL, listOf(Revocation.Roster(listOf(aInfo.signingKey, bad), untilMs)))
                }
            }
            val roster = Revocation.Roster(listOf(aInfo.signingKey, memberInfo.signingKey), untilMs)
            val list = authority.revoke(1uL, listOf(roster))
            assertTrue(a.installRevocations(list))

            // Newcomer is certified after the roster's time: the roster does not concern it.
            val request = newcomer.enrolmentRequest("Newcomer")
            val certificate = authority.issue(
                request,
                4uL,
                listOf("read *", "write *"),
                validFromMs = untilMs + 1uL,
                validUntilMs = untilMs + 365.days.inWholeMilliseconds.toULong(),
            )
            val newcomerInfo = newcomer.installCertificate(authority.publicKey(), certificate)
            assertEquals(untilMs + 1uL, newcomerInfo.notBeforeMs)

            a.startSync()
            val address = a.listenAddress() ?: error("A has no listen address")
            a.collection("tasks").upsert("""{"_id": "t1", "title": "from A"}""")
            for (store in listOf(member, outsider, newcomer)) {
                store.collection("tasks").upsert("""{"_id": "from-${store.deviceId()}", "n": 1}""")
            }

            // The member syncs both ways.
            member.connect(address)
            member.startSync()
            eventually("Member receives A's document", { member.peers() }) { member.collection("tasks").get("t1") }
            eventually("A receives Member's document", { a.peers() }) {
                a.collection("tasks").get("from-${member.deviceId()}")
            }

            // The outsider, certified before the roster and not on it, is refused.
            outsider.connect(address)
            outsider.startSync()
            val refusal = eventually("A refusing Outsider: not on the roster", { logged.takeLast(5) }) {
                synchronized(logged) { logged.firstOrNull { it.contains("is not on it") } }
            }
            assertTrue(refusal.contains("(Outsider)"), refusal)
            assertTrue(refusal.contains(outsiderInfo.signingKey.take(16)), refusal)

            // The newcomer, certified after it, syncs both ways.
            newcomer.connect(address)
            newcomer.startSync()
            eventually("Newcomer receives A's document", { newcomer.peers() }) {
                newcomer.collection("tasks").get("t1")
            }
            eventually("A receives Newcomer's document", { a.peers() }) {
                a.collection("tasks").get("from-${newcomer.deviceId()}")
            }

            delay(2_000) // time for more of the outsider's dials: no link comes up
            assertEquals(emptyList<Peer>(), outsider.peers(), "Outsider has no link")
            assertNull(outsider.collection("tasks").get("t1"), "nothing of A's reached Outsider")
            assertNull(a.collection("tasks").get("from-${outsider.deviceId()}"), "nothing of Outsider's reached A")
            assertEquals(listOf("Member", "Newcomer"), a.peers().map { it.name }.sorted(), "A is linked with the two")
            synchronized(logged) {
                val notOnIt = logged.filter { it.contains("is not on it") }
                assertTrue(notOnIt.all { it.contains("(Outsider)") }, "only Outsider is refused: $notOnIt")
            }
        } finally {
            stores.forEach { it.shutdown() }
            Shoal.installLogger(JulLogger(), LogLevel.INFO)
        }
    }

    @Test
    fun `states an attester signs let enrolled devices fold their signed changes`() = runBlocking<Unit> {
        val authority = Authority.generate()
        val attester = open("Attester", listen = true)
        val b = open("B")
        try {
            enrol(attester, "Attester", authority, 1, listOf("read *", "write *", "attest *"))
            enrol(b, "B", authority, 2)
            val tasks = b.collection("tasks")
            for (i in 1..5) tasks.upsert("""{"_id": "t$i", "n": $i}""")
            expectThrows<ShoalException.NotPermitted> { b.attest() }
            val everything = CompactionPolicy(horizonMs = 0uL)
            assertEquals(0uL, b.compact(everything).changes, "signed changes wait for an attested state")

            attester.startSync()
            b.connect(attester.listenAddress() ?: error("the attester has no listen address"))
            b.startSync()
            eventually("the attester receiving B's documents") {
                attester.collection("tasks").all().size.takeIf { it == 5 }
            }
            assertEquals(5uL, attester.attest().documents)
            assertEquals(0uL, attester.attestBlocking().documents, "nothing new to sign")
            // The states reach B over the open link; B folds its log once they have.
            var folded = 0uL
            eventually("B folding its signed changes", { folded }) {
                folded += b.compactBlocking(everything).changes
                folded.takeIf { it == 5uL }
            }
            assertEquals(5uL, attester.compact(everything).changes)
            assertEquals(5, tasks.all().size, "the documents stay whole")
            assertEquals(3, doc(tasks.get("t3"))["n"]?.toString()?.toInt())
        } finally {
            attester.shutdown()
            b.shutdown()
        }
    }

    @Test
    fun `enrolment mistakes are Certificate errors and change nothing`() = runBlocking<Unit> {
        val authority = Authority.generate()
        open("Bare").use { store ->
            assertNull(store.certificate())
            // No certificate and no app secret: sync cannot start.
            expectThrows<ShoalException.Certificate> { store.startSync() }
            val request = store.enrolmentRequest("Bare")
            assertTrue(request.startsWith("shoal-enrol-1 "), request)
            expectThrows<ShoalException.Certificate> { authority.issue(request, 1, listOf("delete *"), 1.days) }
            expectThrows<ShoalException.Certificate> { authority.issue("not a request", 1, listOf(), 1.days) }
            val certificate = authority.issue(request, 1, listOf("read *"), 1.days)
            expectThrows<ShoalException.Certificate> {
                store.installCertificate(Authority.generate().publicKey(), certificate)
            }
            expectThrows<ShoalException.Certificate> { store.installCertificate(authority.publicKey(), byteArrayOf(1, 2)) }
            expectThrows<ShoalException.InvalidArgument> { store.installCertificate("xyz", certificate) }
            expectThrows<ShoalException.InvalidArgument> { Authority.fromPrivateKey(ByteArray(5)) }
            openStore(dir, "Other").use { other ->
                // Another device's certificate does not install.
                expectThrows<ShoalException.Certificate> { other.installCertificate(authority.publicKey(), certificate) }
            }
            assertNull(store.certificate())
            val info = store.installCertificate(authority.publicKey(), certificate)
            assertEquals(16, info.grantDeviceId.length)
            // The certificate grants reading only: the store refuses a write every peer would refuse.
            expectThrows<ShoalException.NotPermitted> { store.collection("tasks").upsert("""{"_id": "t"}""") }
            assertNull(store.collection("tasks").get("t"))
            store.startSync()
            assertTrue(store.isSyncing())
        }
    }
}
