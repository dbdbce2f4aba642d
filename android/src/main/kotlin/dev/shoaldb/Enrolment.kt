package dev.shoaldb

import kotlin.time.Duration

/**
 * Installs this device's [certificate] (then any intermediate authorities' certificates) issued under the app
 * authority whose public key is [authorityPublicKey] (64 hex digits, shipped in the app). See
 * [Store.installCertificate].
 *
 * ```kotlin
 * val request = store.enrolmentRequest("Ana's phone")          // send it to the authority (text, QR code, …)
 * // … the authority answers with authority.issue(request, serial, listOf("read *", "write tasks"), 365.days)
 * store.installCertificate(AUTHORITY_PUBLIC_KEY, certificate)
 * store.startSync()                                             // syncs with its certificate
 * ```
 *
 * @throws ShoalException.Certificate if it is not this device's, or does not lead to that authority.
 */
suspend fun Store.installCertificate(authorityPublicKey: String, vararg certificate: ByteArray): CertificateInfo =
    installCertificate(authorityPublicKey, certificate.toList())

/**
 * A certificate for the device whose enrolment request is [request], valid from now (less an hour, for clocks that
 * run late) for [validFor]; see [Authority.issue] for [serial] and [grants].
 *
 * @throws ShoalException.Certificate for a malformed request or grant.
 */
fun Authority.issue(request: String, serial: Long, grants: List<String>, validFor: Duration): ByteArray {
    require(serial >= 0) { "serial must not be negative" }
    val now = System.currentTimeMillis().coerceAtLeast(0)
    val from = (now - 3_600_000L).coerceAtLeast(0)
    val until = now + validFor.inWholeMilliseconds.coerceIn(0, Long.MAX_VALUE - now) // never overflows
    return issue(request, serial.toULong(), grants, from.toULong(), until.toULong())
}
