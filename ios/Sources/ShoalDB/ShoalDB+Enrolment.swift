// Device identity conveniences over the generated API (`Store.enrolmentRequest`, `Store.installCertificate`,
// `Store.installRevocations`, `Store.certificate`, `Authority`).

import Foundation

extension Store {
    /// Install this device's `certificate` (then any `intermediates`, the certificates of intermediate
    /// authorities) issued under the app authority whose public key is `authorityPublicKey` (64 hex digits,
    /// shipped in the app). Sync proves this device with it from then on (restarting if it runs).
    ///
    /// ```swift
    /// let request = try store.enrolmentRequest(name: "Ana's iPhone")  // send it to the authority
    /// // … which answers with try authority.issue(request: request, serial: 7, grants: ["read *"], validFor: 365 * 86_400)
    /// try await store.installCertificate(authorityPublicKey: appAuthorityKey, certificate: certificate)
    /// try await store.startSync()                                     // syncs with its certificate
    /// ```
    ///
    /// - Throws: `ShoalError.Certificate` if it is not this device's or does not lead to that authority.
    @discardableResult
    public func installCertificate(
        authorityPublicKey: String,
        certificate: Data,
        intermediates: [Data] = []
    ) async throws -> CertificateInfo {
        try await installCertificate(authorityPublicKey: authorityPublicKey, certificates: [certificate] + intermediates)
    }
}

extension Authority {
    /// A certificate for the device whose enrolment request is `request`, valid from now (less an hour, for
    /// clocks that run late) for `validFor` seconds; see `issue(request:serial:grants:validFromMs:validUntilMs:)`.
    ///
    /// - Throws: `ShoalError.Certificate` for a malformed request or grant.
    public func issue(request: String, serial: UInt64, grants: [String], validFor: TimeInterval) throws -> Data {
        // Clamped, so that no duration (negative, NaN, infinite) traps: ms below 2^63 plus now never overflows.
        let clamp = { (ms: Double) -> UInt64 in ms.isNaN ? 0 : UInt64(min(max(0, ms), 9.2e18)) }
        let now = clamp(Date().timeIntervalSince1970 * 1000)
        let from = now > 3_600_000 ? now - 3_600_000 : 0
        return try issue(request: request, serial: serial, grants: grants, validFromMs: from,
                         validUntilMs: now + clamp(validFor * 1000))
    }
}
