package dev.shoaldb.android

import android.app.Application
import dev.shoaldb.CallbackException
import dev.shoaldb.Store
import dev.shoaldb.StoreConfig
import dev.shoaldb.SyncConfig
import org.junit.Assert.assertArrayEquals
import org.junit.Assert.assertEquals
import org.junit.Assert.assertFalse
import org.junit.Assert.assertNull
import org.junit.Assert.assertTrue
import org.junit.Assert.fail
import org.junit.Rule
import org.junit.Test
import org.junit.rules.TemporaryFolder
import org.junit.runner.RunWith
import org.robolectric.RobolectricTestRunner
import org.robolectric.RuntimeEnvironment
import org.robolectric.annotation.Config
import java.io.File
import java.security.SecureRandom
import java.util.concurrent.CyclicBarrier
import java.util.concurrent.Executors
import java.util.concurrent.TimeUnit
import javax.crypto.KeyGenerator
import javax.crypto.SecretKey

/**
 * [AndroidKeystoreVault] with a software AES key in place of the Keystore's (Robolectric has no AndroidKeyStore
 * provider): the file format, create-once, what decryption refuses, concurrent creators, and a real store keeping
 * its keys in it.
 */
@RunWith(RobolectricTestRunner::class)
@Config(sdk = [34])
class AndroidKeystoreVaultTest {
    @get:Rule
    val temp = TemporaryFolder()

    private val app: Application = RuntimeEnvironment.getApplication()
    private val key = softwareKey()
    private val dir: File by lazy { File(temp.root, "shoal-keys/test.db") }

    private fun softwareKey(): SecretKey = KeyGenerator.getInstance("AES").apply { init(256) }.generateKey()

    private fun vault(key: SecretKey = this.key) = AndroidKeystoreVault(dir) { key }

    private fun secret(size: Int) = ByteArray(size).also { SecureRandom().nextBytes(it) }

    /** Runs [block], expecting the vault's error; returns its reason. */
    private fun refused(block: () -> Unit): String {
        try {
            block()
        } catch (e: CallbackException.Failed) {
            return e.reason
        }
        fail("expected CallbackException.Failed, nothing was thrown")
        throw AssertionError()
    }

    private fun ByteArray.contains(part: ByteArray): Boolean =
        (0..size - part.size).any { at -> part.indices.all { this[at + it] == part[it] } }

    @Test
    fun roundTrip() {
        val vault = vault()
        assertNull(vault.load("noise-key"))
        assertFalse("nothing is written by a load", dir.exists())
        val noise = secret(64)
        assertTrue(vault.create("noise-key", noise))
        assertArrayEquals(noise, vault.load("noise-key"))
        assertArrayEquals("another instance (another process) reads it", noise, vault().load("noise-key"))
        assertNull(vault.load("signing-key"))

        val file = File(dir, "noise-key")
        val bytes = file.readBytes()
        assertEquals("version, IV, ciphertext, tag", 1 + 12 + 64 + 16, bytes.size)
        assertEquals(1.toByte(), bytes[0])
        assertEquals("no temporary file left", listOf("noise-key"), dir.list()!!.toList())
    }

    @Test
    fun anEntryIsCreatedOnce() {
        val vault = vault()
        val first = secret(32)
        assertTrue(vault.create("signing-key", first))
        val file = File(dir, "signing-key").readBytes()
        assertFalse(vault.create("signing-key", secret(32)))
        assertArrayEquals("the first value is kept", first, vault.load("signing-key"))
        assertArrayEquals("the file is untouched", file, File(dir, "signing-key").readBytes())
        assertEquals(listOf("signing-key"), dir.list()!!.toList())
    }

    @Test
    fun theFileHoldsNoneOfTheSecret() {
        val noise = secret(64)
        vault().create("noise-key", noise)
        val file = File(dir, "noise-key").readBytes()
        for (at in 0..noise.size - 4) {
            assertFalse("bytes $at..${at + 4} of the secret are in the file", file.contains(noise.copyOfRange(at, at + 4)))
        }
        // A recognisable secret does not show through either.
        val plain = ByteArray(32) { 0x5a }
        vault().create("signing-key", plain)
        assertFalse(File(dir, "signing-key").readBytes().contains(ByteArray(4) { 0x5a }))
    }

    @Test
    fun aTamperedFileIsRefused() {
        val vault = vault()
        vault.create("noise-key", secret(64))
        val file = File(dir, "noise-key")
        val good = file.readBytes()
        for (at in good.indices) {
            val bad = good.copyOf().also { it[at] = (it[at].toInt() xor 0x01).toByte() }
            file.writeBytes(bad)
            val reason = refused { vault.load("noise-key") }
            assertTrue(reason, reason.contains("noise-key"))
        }
        file.writeBytes(good.copyOf(good.size - 1))
        refused { vault.load("noise-key") }
        file.writeBytes(ByteArray(0))
        assertTrue(refused { vault.load("noise-key") }.contains("not a vault entry"))
        file.writeBytes(good)
        vault.load("noise-key")
    }

    @Test
    fun anEntryCopiedUnderAnotherNameIsRefused() {
        val vault = vault()
        vault.create("signing-key", secret(32))
        File(dir, "signing-key").copyTo(File(dir, "noise-key"))
        val reason = refused { vault.load("noise-key") }
        assertTrue(reason, reason.contains("cannot be decrypted"))
        vault.load("signing-key")
    }

    @Test
    fun anotherKeyCannotDecrypt() {
        // As after the app's data was moved to another phone: the files came along, the Keystore key did not.
        vault().create("noise-key", secret(64))
        val reason = refused { vault(softwareKey()).load("noise-key") }
        assertTrue(reason, reason.contains("cannot be decrypted: its Keystore key is gone"))
        assertTrue(reason, reason.contains("delete $dir"))
    }

    @Test
    fun concurrentCreatorsAgreeOnOneEntry() {
        val threads = 8
        repeat(5) { round ->
            val name = "entry-$round"
            val secrets = List(threads) { secret(64) }
            val barrier = CyclicBarrier(threads)
            val pool = Executors.newFixedThreadPool(threads)
            try {
                // One vault per thread, as separate processes would have.
                val results = secrets.map { s -> pool.submit<Boolean> { barrier.await(); vault().create(name, s) } }
                    .map { it.get(30, TimeUnit.SECONDS) }
                assertEquals("exactly one creator wins: $results", 1, results.count { it })
                assertArrayEquals(secrets[results.indexOf(true)], vault().load(name))
            } finally {
                pool.shutdownNow()
            }
        }
        assertEquals("no temporary file left", List(5) { "entry-$it" }.toSet(), dir.list()!!.toSet())
    }

    @Test
    fun namesCannotLeaveTheDirectory() {
        for (name in listOf("", "../x", "a/b", ".hidden", "a b", "x.tmp")) {
            refused { vault().create(name, secret(8)) }
            refused { vault().load(name) }
        }
        refused { vault().create("big", secret(1025)) }
        assertFalse(dir.exists())
        for (name in listOf("", "../x", "a/b", ".db")) {
            try {
                AndroidKeystoreVault.create(app, name)
                fail("the vault name \"$name\" was taken")
            } catch (_: IllegalArgumentException) {
            }
        }
    }

    @Test
    fun theVaultOfADatabaseIsInTheNoBackupDirectory() {
        val vault = ShoalAndroid.keyVault(app)
        assertEquals(File(app.noBackupFilesDir, "shoal-keys/shoal.db"), vault.directory)
        assertEquals(
            File(app.noBackupFilesDir, "shoal-keys/other.db"),
            ShoalAndroid.keyVault(app, "other.db").directory,
        )
        // Reading an absent entry needs no Keystore key.
        assertNull(vault.load("noise-key"))
        // Robolectric has no AndroidKeyStore: the failure is reported as the vault's error, and nothing is left.
        val reason = refused { vault.create("noise-key", secret(64)) }
        assertTrue(reason, reason.contains("AndroidKeyStore"))
        assertFalse(File(vault.directory, "noise-key").exists())
    }

    @Test
    fun aStoreKeepsItsKeysInTheVault() {
        val db = File(temp.root, "store.db")
        fun open(): Store = Store.openBlocking(
            StoreConfig(
                path = db.path,
                deviceName = "phone",
                appSecret = "vault test",
                sync = SyncConfig(mdns = false),
                keyVault = vault(),
            ),
        )
        val deviceId = open().use { store ->
            store.enrolmentRequest("phone")
            store.deviceId().also { store.shutdown() }
        }
        assertEquals(setOf("noise-key", "signing-key"), dir.list()!!.toSet())
        val noise = vault().load("noise-key")!!
        val signing = vault().load("signing-key")!!
        assertEquals(64, noise.size)
        assertEquals(32, signing.size)
        assertEquals("the same keys after a restart", deviceId, open().use { it.deviceId().also { _ -> it.shutdown() } })
        var file = db.readBytes()
        File(db.path + "-wal").takeIf { it.exists() }?.let { file += it.readBytes() }
        assertFalse("the Noise key is in the database", file.contains(noise.copyOfRange(0, 32)))
        assertFalse("the signing key is in the database", file.contains(signing))
        assertFalse("nothing beside the database", File(db.path + "-keys").exists())

        // The Keystore key gone (a restored phone with the files): the store refuses to open, saying why.
        try {
            Store.openBlocking(StoreConfig(path = db.path, deviceName = "phone", keyVault = vault(softwareKey()))).close()
            fail("opened with keys that cannot be decrypted")
        } catch (e: dev.shoaldb.ShoalException.Storage) {
            assertTrue(e.message, e.message!!.contains("cannot be decrypted"))
        }
    }
}
