package dev.shoaldb.android

import android.content.Context
import android.os.Build
import android.security.keystore.KeyGenParameterSpec
import android.security.keystore.KeyProperties
import android.system.ErrnoException
import android.system.Os
import android.system.OsConstants
import dev.shoaldb.CallbackException
import dev.shoaldb.KeyVault
import dev.shoaldb.StoreConfig
import java.io.File
import java.io.FileInputStream
import java.io.FileOutputStream
import java.io.IOException
import java.io.RandomAccessFile
import java.nio.channels.FileChannel
import java.nio.file.FileAlreadyExistsException
import java.nio.file.Files
import java.nio.file.StandardOpenOption
import java.security.KeyStore
import javax.crypto.AEADBadTagException
import javax.crypto.Cipher
import javax.crypto.KeyGenerator
import javax.crypto.SecretKey
import javax.crypto.spec.GCMParameterSpec

/**
 * The [KeyVault] for Android: keeps this device's private keys (Shoal's Noise key and signing key) encrypted by a
 * key of the Android Keystore, in a directory under [Context.getNoBackupFilesDir]. Pass it as
 * [StoreConfig.keyVault] (or `keyVault` of `Shoal.open`); [ShoalAndroid.keyVault] makes one.
 *
 * ```kotlin
 * val store = Shoal.open(ShoalAndroid.databasePath(context), "Ana's phone", keyVault = ShoalAndroid.keyVault(context))
 * ```
 *
 * - **Nothing to back up.** The Keystore key is made on first use (AES-256, GCM, not exportable, no user
 *   authentication, so sync can run while the phone is locked); Keystore keys never leave the device and are never
 *   in a backup. The encrypted entries are in the no-backup directory, which Auto Backup and device-to-device
 *   transfer leave out. A phone restored from a backup, or a database file copied elsewhere, therefore starts with
 *   new keys: it is a new device, which is enrolled again (a new certificate) and gets its data back by sync.
 * - **Format.** One file per entry, `<directory>/<entry>`: a version byte (1), the 12-byte IV the cipher chose,
 *   then the AES-GCM ciphertext and its 128-bit tag. The version byte and the entry's name are authenticated with
 *   it (associated data), so a file altered, or copied under another entry's name, fails to decrypt.
 * - **Atomic and durable.** [create] writes a temporary file in the same directory, syncs it to the disk, then
 *   hard-links it under the entry's name, which fails when the entry exists: of two threads or processes creating
 *   the same entry at once, exactly one succeeds, and a crash leaves either no entry or a whole one.
 * - **Errors.** An entry that cannot be decrypted (its Keystore key is gone, or its file was altered) makes
 *   [load] throw, so the store fails to open with `ShoalException.Storage` instead of quietly making this device
 *   a new one. Deleting [directory] then gives the device new keys (it must be enrolled again).
 *
 * Safe to use from any thread, and from several processes of the app at once.
 *
 * @property directory where the encrypted entries are (`<noBackupFilesDir>/shoal-keys/<name>` for a vault made by
 *   [AndroidKeystoreVault.create]).
 */
class AndroidKeystoreVault internal constructor(
    val directory: File,
    private val key: () -> SecretKey,
) : KeyVault {

    /**
     * The secret stored under [name], decrypted; `null` when there is no such entry.
     *
     * @param name the entry's name (letters, digits, `-` and `_`; Shoal uses `noise-key` and `signing-key`).
     * @return the secret, or `null` when the entry does not exist.
     * @throws CallbackException.Failed when the name is not an entry name, the file cannot be read, is not a vault
     *   entry, or cannot be decrypted (its Keystore key is gone, or the file was altered or copied from another
     *   entry).
     */
    override fun load(name: String): ByteArray? = guarded("read the entry '$name'") {
        val file = entry(name)
        if (!file.exists()) return null
        val sealed = readBounded(file)
        if (sealed.size < HEADER_BYTES + TAG_BITS / 8 || sealed[0] != VERSION) {
            fail("the key vault's entry $file is not a vault entry (${sealed.size} bytes, version ${sealed.firstOrNull()})")
        }
        val cipher = Cipher.getInstance(TRANSFORMATION)
        cipher.init(Cipher.DECRYPT_MODE, key(), GCMParameterSpec(TAG_BITS, sealed, 1, IV_BYTES))
        cipher.updateAAD(associatedData(name))
        try {
            cipher.doFinal(sealed, HEADER_BYTES, sealed.size - HEADER_BYTES)
        } catch (_: AEADBadTagException) {
            fail(
                "the key vault's entry '$name' cannot be decrypted: its Keystore key is gone (the app's data was " +
                    "moved to another device, or its Keystore keys were removed) or the file $file was altered; " +
                    "delete $directory to make this a new device (with new keys, to enrol again)",
            )
        }
    }

    /**
     * Encrypts [secret] and stores it under [name], unless an entry of that name exists. Atomic (of several
     * threads or processes creating the same entry at once, exactly one stores its secret) and durable (synced to
     * the disk before it returns `true`).
     *
     * @param name the entry's name (letters, digits, `-` and `_`).
     * @param secret the bytes to keep (Shoal's entries are at most 1 KiB).
     * @return `true` when [secret] was stored; `false` when the entry existed, which is left unchanged.
     * @throws CallbackException.Failed when the name is not an entry name, the Keystore key cannot be made or used,
     *   or the directory cannot be written.
     */
    override fun create(name: String, secret: ByteArray): Boolean = guarded("create the entry '$name'") {
        val target = entry(name)
        if (target.exists()) return false
        if (secret.size > MAX_SECRET_BYTES) fail("a key vault entry holds at most $MAX_SECRET_BYTES bytes, not ${secret.size}")
        val cipher = Cipher.getInstance(TRANSFORMATION)
        cipher.init(Cipher.ENCRYPT_MODE, key())
        val iv = cipher.iv
        if (iv == null || iv.size != IV_BYTES) fail("the cipher chose a ${iv?.size ?: 0}-byte IV, not $IV_BYTES")
        cipher.updateAAD(associatedData(name))
        val sealed = byteArrayOf(VERSION) + iv + cipher.doFinal(secret)

        if (!directory.mkdirs() && !directory.isDirectory) throw IOException("cannot create the directory $directory")
        val temp = File.createTempFile(".$name.", ".tmp", directory)
        try {
            FileOutputStream(temp).use { out ->
                out.write(sealed)
                out.flush()
                out.fd.sync()
            }
            val created = link(temp, target)
            if (created) syncDirectory()
            created
        } finally {
            temp.delete()
        }
    }

    private fun entry(name: String): File {
        val plain = name.isNotEmpty() && name.length <= 64 &&
            name.all { it in 'a'..'z' || it in 'A'..'Z' || it in '0'..'9' || it == '-' || it == '_' }
        if (!plain) fail("not a key vault entry name: \"$name\"")
        return File(directory, name)
    }

    /** The file's bytes; refuses a file larger than any entry (so that a stray big file is not read whole). */
    private fun readBounded(file: File): ByteArray {
        val limit = HEADER_BYTES + MAX_SECRET_BYTES + TAG_BITS / 8
        FileInputStream(file).use { input ->
            val bytes = input.readNBytesCompat(limit + 1)
            if (bytes.size > limit) fail("the key vault's entry $file is larger than $limit bytes")
            return bytes
        }
    }

    /** Hard-links [temp] as [target]: `false` when [target] exists (the link is what makes [create] atomic). */
    private fun link(temp: File, target: File): Boolean =
        if (Build.VERSION.SDK_INT >= 26) {
            try {
                Files.createLink(target.toPath(), temp.toPath())
                true
            } catch (_: FileAlreadyExistsException) {
                false
            }
        } else {
            try {
                Os.link(temp.path, target.path)
                true
            } catch (e: ErrnoException) {
                if (e.errno == OsConstants.EEXIST) false else throw IOException("cannot link $target: $e", e)
            }
        }

    /**
     * Syncs the directory, so that the new entry's name survives a power loss too. Best effort: a filesystem that
     * refuses to sync a directory still journals the link soon after.
     */
    private fun syncDirectory() {
        try {
            if (Build.VERSION.SDK_INT >= 26) {
                FileChannel.open(directory.toPath(), StandardOpenOption.READ).use { it.force(true) }
            } else {
                val fd = Os.open(directory.path, OsConstants.O_RDONLY, 0)
                try {
                    Os.fsync(fd)
                } finally {
                    Os.close(fd)
                }
            }
        } catch (_: IOException) {
        } catch (_: ErrnoException) {
        }
    }

    /**
     * Runs [body], turning anything it throws into the [CallbackException] Shoal expects (its message then
     * reaches the app in the `ShoalException.Storage` of `Store.open`).
     */
    private inline fun <T> guarded(what: String, body: () -> T): T =
        try {
            body()
        } catch (e: CallbackException) {
            throw e
        } catch (e: Exception) {
            throw CallbackException.Failed("the key vault in $directory could not $what: $e")
        }

    /** A readable description, without any secret. */
    override fun toString(): String = "AndroidKeystoreVault($directory)"

    /** Makes vaults and holds the format's constants. */
    companion object {
        private const val KEYSTORE = "AndroidKeyStore"
        private const val TRANSFORMATION = "AES/GCM/NoPadding"
        private const val VERSION: Byte = 1
        private const val IV_BYTES = 12
        private const val TAG_BITS = 128
        private const val HEADER_BYTES = 1 + IV_BYTES
        private const val MAX_SECRET_BYTES = 1024

        /** Serialises the creation of Keystore keys in this process (a file lock does it across processes). */
        private val keystoreLock = Any()

        /**
         * The vault named [name] of this app: its entries in `<noBackupFilesDir>/shoal-keys/<name>`, encrypted by
         * the Android Keystore key `dev.shoaldb.vault.<name>` (made on first use). Nothing is read or made before
         * the store uses the vault.
         *
         * Use one vault per store, named after its database file, as [ShoalAndroid.keyVault] does: two stores
         * sharing a vault would be one device.
         *
         * @param context any context of the app (only its no-backup directory is used).
         * @param name the vault's name: letters, digits, `.`, `-` and `_`, not starting with `.` (default
         *   `"shoal.db"`, the default database name of [ShoalAndroid.databasePath]).
         * @return the vault, to pass as [StoreConfig.keyVault].
         * @throws IllegalArgumentException when [name] is not such a name.
         */
        @JvmStatic
        @JvmOverloads
        fun create(context: Context, name: String = "shoal.db"): AndroidKeystoreVault {
            val plain = name.isNotEmpty() && name.length <= 128 && !name.startsWith('.') &&
                name.all { it in 'a'..'z' || it in 'A'..'Z' || it in '0'..'9' || it in "._-" }
            require(plain) { "not a key vault name (letters, digits, '.', '-', '_'; not starting with '.'): \"$name\"" }
            val directory = File(File(context.noBackupFilesDir, "shoal-keys"), name)
            val alias = "dev.shoaldb.vault.$name"
            return AndroidKeystoreVault(directory) { keystoreKey(alias, directory) }
        }

        /**
         * The Keystore key [alias], made when missing. Checked again under a lock (in this process, then across
         * processes with a lock file in [directory]) before it is made, since making it twice would replace the
         * key that encrypted the entries already written.
         */
        private fun keystoreKey(alias: String, directory: File): SecretKey {
            existingKey(alias)?.let { return it }
            synchronized(keystoreLock) {
                if (!directory.mkdirs() && !directory.isDirectory) {
                    throw IOException("cannot create the directory $directory")
                }
                RandomAccessFile(File(directory, ".keystore.lock"), "rw").use { file ->
                    val lock = file.channel.lock()
                    try {
                        return existingKey(alias) ?: newKey(alias)
                    } finally {
                        lock.release()
                    }
                }
            }
        }

        private fun existingKey(alias: String): SecretKey? {
            val store = KeyStore.getInstance(KEYSTORE).apply { load(null) }
            return store.getKey(alias, null) as SecretKey?
        }

        private fun newKey(alias: String): SecretKey {
            val generator = KeyGenerator.getInstance(KeyProperties.KEY_ALGORITHM_AES, KEYSTORE)
            generator.init(
                KeyGenParameterSpec.Builder(alias, KeyProperties.PURPOSE_ENCRYPT or KeyProperties.PURPOSE_DECRYPT)
                    .setBlockModes(KeyProperties.BLOCK_MODE_GCM)
                    .setEncryptionPaddings(KeyProperties.ENCRYPTION_PADDING_NONE)
                    .setKeySize(256)
                    .build(),
            )
            return generator.generateKey()
        }

        private fun associatedData(name: String): ByteArray = byteArrayOf(VERSION) + name.toByteArray(Charsets.UTF_8)

        private fun fail(message: String): Nothing = throw CallbackException.Failed(message)

        /** Up to [limit] bytes of the stream (`InputStream.readNBytes` needs API 33). */
        private fun FileInputStream.readNBytesCompat(limit: Int): ByteArray {
            val buffer = ByteArray(limit)
            var read = 0
            while (read < limit) {
                val n = read(buffer, read, limit - read)
                if (n < 0) break
                read += n
            }
            return buffer.copyOf(read)
        }
    }
}
