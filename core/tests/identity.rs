//! Device identity (issue 14): the app authority, device certificates with permissions, intermediate authorities,
//! revocation lists, enrolment through a store, and certificates checked inside the Noise handshake of real sync
//! engines — a device without a valid certificate (none, another authority's, someone else's, expired, not yet
//! valid, revoked) is refused with a typed reason, and an honest pair links up.

#[path = "common/enrolled.rs"]
mod enrolled;
#[path = "common/wires.rs"]
mod wires;

use enrolled::{enrolled_engine_with, everything, year, DAY, NOW};

use serde_json::json;
use shoaldb::crdt::path::Path;
use shoaldb::enrolment::{self, EnrolmentRequest, Validity};
use shoaldb::security::certificate::{Permissions, CLOCK_SKEW_MS, MAX_CERTIFICATE_BYTES, MAX_CHAIN_LEN};
use shoaldb::security::revocation::MAX_ROSTER_MEMBERS;
use shoaldb::security::{
    Access, AppSecret, Certificate, CertificateChain, CertificateError, DeviceKey, Enrolment, Grant, Handshake,
    Identity, Revocation, RevocationList, Revocations, SecurityError, SigningKey, VerifyingKey,
};
use shoaldb::sync::{Engine, EngineEvent, Subscription, TransportKind};
use shoaldb::util::sources::Sources;
use shoaldb::Store;

/// A device's keys, made locally.
struct Device {
    identity: Identity,
    signing: SigningKey,
}

impl Device {
    fn new() -> Device {
        Device { identity: Identity::generate().unwrap(), signing: SigningKey::generate().unwrap() }
    }

    fn request(&self, name: &str) -> EnrolmentRequest {
        EnrolmentRequest {
            name: name.into(),
            signing_key: self.signing.verifying_key(),
            noise_key: self.identity.device_key(),
        }
    }

    fn enrol(&self, chain: Vec<Certificate>, authorities: &[VerifyingKey]) -> Enrolment {
        Enrolment::new(
            &self.identity,
            self.signing.clone(),
            CertificateChain::new(chain).unwrap(),
            authorities.to_vec(),
        )
        .unwrap()
    }
}

fn cert(authority: &SigningKey, device: &Device, serial: u64, grants: Vec<Grant>, validity: Validity) -> Certificate {
    enrolment::issue(authority, &device.request(&format!("device {serial}")), serial, grants, validity).unwrap()
}

fn revocations(authority: &SigningKey, number: u64, entries: Vec<Revocation>) -> RevocationList {
    enrolment::revoke(authority, number, NOW, entries).unwrap()
}

// ---- certificates ----

#[test]
fn a_certificate_round_trips_and_any_altered_byte_is_refused() {
    let authority = SigningKey::generate().unwrap();
    let device = Device::new();
    let grants =
        vec![Grant::read("*"), Grant::parse("write tasks fields status, notes where owner == $device").unwrap()];
    let c = cert(&authority, &device, 7, grants.clone(), year());
    let bytes = c.encode();
    assert!(bytes.len() < 400, "compact: {} bytes", bytes.len());
    let back = Certificate::decode(&bytes).unwrap();
    assert_eq!(back, c);
    assert_eq!(back.body().grants, grants);
    assert_eq!(back.body().noise_key, Some(device.identity.public_key()));
    for i in 0..bytes.len() {
        let mut bad = bytes.clone();
        bad[i] ^= 0x01;
        assert!(Certificate::decode(&bad).is_err(), "byte {i} altered and still accepted");
    }
    assert!(matches!(Certificate::decode(&vec![0u8; MAX_CERTIFICATE_BYTES + 1]), Err(CertificateError::Malformed(_))));
    assert!(Certificate::decode(&bytes[..bytes.len() - 1]).is_err());
}

#[test]
fn a_certificate_signed_by_a_key_other_than_its_named_issuer_is_refused() {
    let (authority, forger) = (SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
    let device = Device::new();
    let mut body = cert(&authority, &device, 1, everything(), year()).body().clone();
    // The forger cannot sign a body naming the authority...
    assert!(Certificate::issue(body.clone(), &forger).is_err());
    // ...and a body it signs names the forger, which no device pins.
    body.issuer = forger.verifying_key();
    let forged = Certificate::issue(body, &forger).unwrap();
    let err = CertificateChain::single(forged).verify(&[authority.verifying_key()], &Revocations::new(), NOW);
    assert_eq!(err, Err(CertificateError::UnknownAuthority(forger.verifying_key())));
}

#[test]
fn grants_parse_print_and_refuse_what_is_malformed() {
    for text in [
        "read tasks",
        "read *",
        "read tasks where team == \"north\"",
        "write tasks",
        "write tasks fields status, notes",
        "write tasks fields status, notes.body where owner == $device",
    ] {
        let grant = Grant::parse(text).unwrap();
        assert_eq!(grant.to_string(), text);
        assert_eq!(Grant::parse(&grant.to_string()).unwrap(), grant);
    }
    for bad in [
        "",
        "delete tasks",
        "read",
        "read tasks fields status",
        "write tasks fields",
        "write tasks fields a..b",
        "read tasks where owner == $other",
        "read tasks where ((",
        "read \u{7}bell",
        "read tasks extra",
    ] {
        assert!(matches!(Grant::parse(bad), Err(CertificateError::Malformed(_))), "accepted `{bad}`");
    }
}

#[test]
fn permissions_follow_filters_fields_and_the_device_id() {
    let device = Device::new();
    let me = device.signing.verifying_key().device_id();
    let grants = vec![
        Grant::parse("read tasks where team == \"north\"").unwrap(),
        Grant::parse("write tasks fields status, notes where owner == $device").unwrap(),
    ];
    let p = Permissions::new(grants);
    let north = json!({"team": "north", "owner": me.to_string()});
    let south = json!({"team": "south", "owner": "someone"});
    assert!(p.may_read("tasks", &north, me));
    assert!(!p.may_read("tasks", &south, me));
    assert!(!p.may_read("other", &north, me));
    assert!(p.may_read_some("tasks") && !p.may_read_some("other"));
    let paths = |ps: &[&str]| ps.iter().map(|p| Path::parse(p).unwrap()).collect::<Vec<_>>();
    let ok = paths(&["status", "notes.body[2]"]);
    let bad = paths(&["status", "assignee"]);
    assert!(p.may_write("tasks", &north, ok.iter(), me));
    assert!(!p.may_write("tasks", &north, bad.iter(), me));
    assert!(!p.may_write("tasks", &south, ok.iter(), me), "not the owner");
    assert!(!p.may_write("tasks", &north, ok.iter(), shoaldb::PeerId(me.0 ^ 1)), "another device");
}

// ---- chains ----

/// org → site → device; returns (org, site key, site cert, device, device cert).
fn delegated(
    site_grants: Vec<Grant>,
    device_grants: Vec<Grant>,
) -> (SigningKey, SigningKey, Certificate, Device, Certificate) {
    let org = SigningKey::generate().unwrap();
    let site = SigningKey::generate().unwrap();
    let site_cert = enrolment::issuing(&org, "north site", site.verifying_key(), 1, site_grants, year()).unwrap();
    let device = Device::new();
    let device_cert = cert(&site, &device, 100, device_grants, year());
    (org, site, site_cert, device, device_cert)
}

#[test]
fn an_intermediate_authority_bounds_what_it_issues() {
    let (org, _site, site_cert, device, device_cert) =
        delegated(vec![Grant::read("tasks"), Grant::write("tasks").only_fields(&["status"])], everything());
    let chain = CertificateChain::new(vec![device_cert.clone(), site_cert.clone()]).unwrap();
    let verified = chain.verify(&[org.verifying_key()], &Revocations::new(), NOW).unwrap();
    assert_eq!(verified.noise_key, device.identity.device_key());
    let me = verified.device_id();
    let doc = json!({});
    // The device certificate says "everything"; the site may only grant reads of tasks and writes of status.
    assert!(verified.permissions.may_read("tasks", &doc, me));
    assert!(!verified.permissions.may_read("payroll", &doc, me));
    let status = [Path::parse("status").unwrap()];
    let assignee = [Path::parse("assignee").unwrap()];
    assert!(verified.permissions.may_write("tasks", &doc, status.iter(), me));
    assert!(!verified.permissions.may_write("tasks", &doc, assignee.iter(), me));
    // Without the site's certificate the chain does not reach the org.
    let alone = CertificateChain::single(device_cert.clone()).verify(&[org.verifying_key()], &Revocations::new(), NOW);
    assert!(matches!(alone, Err(CertificateError::UnknownAuthority(_))));
    // Revoking the site's certificate revokes what it issued.
    let mut revoked = Revocations::new();
    let list = revocations(&org, 1, vec![Revocation::Certificate { issuer: org.verifying_key(), serial: 1 }]);
    assert!(revoked.accept(list, &[org.verifying_key()]).unwrap());
    assert!(matches!(chain.verify(&[org.verifying_key()], &revoked, NOW), Err(CertificateError::Revoked(_))));
}

#[test]
fn a_device_cannot_issue_and_chains_are_bounded() {
    let org = SigningKey::generate().unwrap();
    let device = Device::new();
    let device_cert = cert(&org, &device, 1, everything(), year());
    // A device certificate's holder signs a certificate for a second device: not an authority.
    let second = Device::new();
    let second_cert = cert(&device.signing, &second, 1, everything(), year());
    let chain = CertificateChain::new(vec![second_cert, device_cert]).unwrap();
    assert!(matches!(
        chain.verify(&[org.verifying_key()], &Revocations::new(), NOW),
        Err(CertificateError::BrokenChain(_))
    ));
    // An authority certificate presented as a device's.
    let site = SigningKey::generate().unwrap();
    let site_cert = enrolment::issuing(&org, "site", site.verifying_key(), 2, everything(), year()).unwrap();
    let chain = CertificateChain::single(site_cert.clone());
    assert!(matches!(
        chain.verify(&[org.verifying_key()], &Revocations::new(), NOW),
        Err(CertificateError::BrokenChain(_))
    ));
    assert!(CertificateChain::new(vec![site_cert; MAX_CHAIN_LEN + 1]).is_err());
    assert!(CertificateChain::new(Vec::new()).is_err());
    assert_eq!(CertificateChain::decode(&[]), Err(CertificateError::Missing));
    assert!(CertificateChain::decode(&[0xff; 64]).is_err());
}

#[test]
fn validity_periods_allow_the_clock_skew_and_no_more() {
    let org = SigningKey::generate().unwrap();
    let device = Device::new();
    let validity = Validity { not_before_ms: NOW, not_after_ms: NOW + DAY };
    let chain = CertificateChain::single(cert(&org, &device, 1, everything(), validity));
    let at = |t: u64| chain.verify(&[org.verifying_key()], &Revocations::new(), t);
    assert!(at(NOW).is_ok() && at(NOW + DAY).is_ok());
    assert!(at(NOW - CLOCK_SKEW_MS).is_ok() && at(NOW + DAY + CLOCK_SKEW_MS).is_ok());
    assert!(matches!(at(NOW - CLOCK_SKEW_MS - 1), Err(CertificateError::NotYetValid { .. })));
    assert!(matches!(at(NOW + DAY + CLOCK_SKEW_MS + 1), Err(CertificateError::Expired { .. })));
}

#[test]
fn revocation_lists_replace_older_ones_and_refuse_strangers() {
    let org = SigningKey::generate().unwrap();
    let stranger = SigningKey::generate().unwrap();
    let device = Device::new();
    let chain = CertificateChain::single(cert(&org, &device, 5, everything(), year()));
    let pinned = [org.verifying_key()];
    let mut held = Revocations::new();
    let by_key = revocations(&org, 2, vec![Revocation::Device { signing_key: device.signing.verifying_key() }]);
    let bytes = by_key.encode();
    let by_key = RevocationList::decode(&bytes).unwrap();
    assert!(held.accept(by_key.clone(), &pinned).unwrap());
    assert!(matches!(chain.verify(&pinned, &held, NOW), Err(CertificateError::Revoked(_))));
    // An older list (number 1) does not replace the newer one; the same one again is not news.
    assert!(!held.accept(revocations(&org, 1, Vec::new()), &pinned).unwrap());
    assert!(!held.accept(by_key, &pinned).unwrap());
    assert!(chain.verify(&pinned, &held, NOW).is_err());
    // A newer list that no longer names the device lifts the revocation (lists carry everything in force).
    assert!(held.accept(revocations(&org, 3, Vec::new()), &pinned).unwrap());
    assert!(chain.verify(&pinned, &held, NOW).is_ok());
    // Lists from a key nobody pins, and altered lists, are refused.
    assert!(held.accept(revocations(&stranger, 9, Vec::new()), &pinned).is_err());
    let mut bad = revocations(&org, 4, Vec::new()).encode();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    assert!(matches!(RevocationList::decode(&bad), Err(CertificateError::BadSignature(_))));
    // Authors: a limit on the counters still accepted.
    let author = device.signing.verifying_key().author(0);
    let list = revocations(&org, 5, vec![Revocation::Author { author, accept_until: Some(41) }]);
    assert!(held.accept(list, &pinned).unwrap());
    assert_eq!(held.author_limit(author), Some(Some(41)));
    assert_eq!(held.author_limit(device.signing.verifying_key().author(1)), None);
}

#[test]
fn author_ids_derive_from_the_signing_key() {
    let a = SigningKey::generate().unwrap().verifying_key();
    let b = SigningKey::generate().unwrap().verifying_key();
    assert_eq!(a.author(0), a.author(0));
    assert_eq!(a.device_id(), a.author(0));
    assert_ne!(a.author(0), a.author(1));
    assert_ne!(a.author(0), b.author(0));
    let restored = SigningKey::from_bytes(&SigningKey::generate().unwrap().to_bytes()).unwrap();
    assert_eq!(restored.verifying_key(), SigningKey::from_bytes(&restored.to_bytes()).unwrap().verifying_key());
    assert!(SigningKey::from_bytes(&[0u8; 32]).is_err());
    assert!(SigningKey::from_bytes(&[1u8; 31]).is_err());
    assert!(!format!("{restored:?}").contains(&shoaldb::util::hex(&restored.to_bytes())));
}

// ---- enrolment through a store ----

#[test]
fn a_store_enrols_installs_and_reloads_its_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let authority = SigningKey::generate().unwrap();
    let store = Store::open(dir.path().join("phone.db")).unwrap();
    assert!(enrolment::load(&store).unwrap().is_none(), "development mode until a certificate is installed");
    let request = enrolment::request(&store, "Alice's phone").unwrap();
    // The request's text form is what leaves the device; it holds no private key.
    let text = request.to_string();
    assert_eq!(EnrolmentRequest::parse(&text).unwrap(), request);
    assert!(!text.contains(&shoaldb::util::hex(&enrolment::device_signing_key(&store).unwrap().to_bytes())));
    assert!(EnrolmentRequest::parse("shoal-enrol-1 zz").is_err());
    let c = enrolment::issue(&authority, &request, 1, everything(), year()).unwrap();
    enrolment::install(&store, std::slice::from_ref(&c), &[authority.verifying_key()]).unwrap();
    drop(store);
    let store = Store::open(dir.path().join("phone.db")).unwrap();
    let loaded = enrolment::load(&store).unwrap().unwrap();
    assert_eq!(loaded.chain().leaf(), &c);
    assert_eq!(loaded.authorities(), &[authority.verifying_key()]);
    // A certificate issued for another device's keys cannot be installed here.
    let other = Device::new();
    let not_mine = cert(&authority, &other, 2, everything(), year());
    let err = enrolment::install(&store, &[not_mine], &[authority.verifying_key()]).unwrap_err();
    assert!(
        matches!(
            err,
            shoaldb::node::NodeError::Identity(SecurityError::Certificate(CertificateError::NotThisDevice(_)))
        ),
        "{err}"
    );
    // Nor one that leads to an authority the app does not pin.
    let elsewhere = SigningKey::generate().unwrap();
    let foreign = enrolment::issue(&elsewhere, &request, 3, everything(), year()).unwrap();
    assert!(enrolment::install(&store, &[foreign], &[authority.verifying_key()]).is_err());
    assert_eq!(enrolment::load(&store).unwrap().unwrap().chain().leaf(), &c, "a refused install changes nothing");
}

// ---- the handshake of real sync engines ----

struct Node {
    engine: Engine,
    _dir: tempfile::TempDir,
}

fn node(identity: Identity, access: impl Into<Access>, now: u64) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("db")).unwrap();
    let engine = Engine::new(store.replica(), identity, access, "n", vec![Subscription::everything()], 0)
        .with_sources(Sources::system().with_clock(move || now));
    Node { engine, _dir: dir }
}

/// Link `a` (dialling) and `b`, move frames until quiet; returns each side's link-down reason, if any.
fn link(a: &mut Node, b: &mut Node) -> (Option<String>, Option<String>) {
    let la = a.engine.add_link(TransportKind::Lan, true).unwrap();
    let lb = b.engine.add_link(TransportKind::Lan, false).unwrap();
    loop {
        let mut moved = false;
        while let Some(f) = a.engine.poll_frame(la) {
            b.engine.on_frame(lb, &f);
            moved = true;
        }
        while let Some(f) = b.engine.poll_frame(lb) {
            a.engine.on_frame(la, &f);
            moved = true;
        }
        if !moved {
            break;
        }
    }
    let down = |e: &mut Engine| {
        let mut reason = None;
        while let Some(ev) = e.poll_event() {
            if let EngineEvent::LinkDown { reason: r, .. } = ev {
                reason = Some(r);
            }
        }
        reason
    };
    (down(&mut a.engine), down(&mut b.engine))
}

fn enrolled(authority: &SigningKey, serial: u64, validity: Validity) -> (Identity, Enrolment) {
    let device = Device::new();
    let c = cert(authority, &device, serial, everything(), validity);
    let e = device.enrol(vec![c], &[authority.verifying_key()]);
    (device.identity, e)
}

#[test]
fn enrolled_devices_link_up_and_learn_each_others_certificate() {
    let authority = SigningKey::generate().unwrap();
    let (ia, ea) = enrolled(&authority, 1, year());
    let (ib, eb) = enrolled(&authority, 2, year());
    let (mut a, mut b) = (node(ia, ea, NOW), node(ib, eb, NOW));
    let (da, db) = link(&mut a, &mut b);
    assert_eq!((da, db), (None, None));
    let name_on = |n: &Node| n.engine.link_certificate(1).map(|v| (v.name.clone(), v.serial));
    assert_eq!(name_on(&a), Some(("device 2".to_string(), 2)));
    assert_eq!(name_on(&b), Some(("device 1".to_string(), 1)));
}

#[test]
fn a_device_without_a_valid_certificate_is_refused_at_the_handshake() {
    let authority = SigningKey::generate().unwrap();
    let (ia, ea) = enrolled(&authority, 1, year());
    let honest = |ia: &Identity, ea: &Enrolment| node(ia.clone(), ea.clone(), NOW);

    // Development mode (shared secret) against certificates: the first message already fails.
    let mut dev = node(Identity::generate().unwrap(), AppSecret::from_bytes(b"secret").unwrap(), NOW);
    let (d1, d2) = link(&mut dev, &mut honest(&ia, &ea));
    assert!(d2.unwrap().contains("handshake"), "the responder refuses the first message");
    assert_eq!(d1, None, "the dialler hears nothing back...");
    dev.engine.tick(shoaldb::sync::engine::HANDSHAKE_TIMEOUT_MS);
    assert!(dev.engine.is_closed(1), "...and gives up at its handshake timeout");

    // Expired, and not yet valid, on the checker's clock.
    let (ie, ee) = enrolled(&authority, 2, Validity { not_before_ms: NOW - 30 * DAY, not_after_ms: NOW - DAY });
    let (_, refused) = link(&mut node(ie, ee, NOW), &mut honest(&ia, &ea));
    assert!(refused.unwrap().contains("expired"));
    let (iy, ey) = enrolled(&authority, 3, Validity { not_before_ms: NOW + DAY, not_after_ms: NOW + 30 * DAY });
    let (_, refused) = link(&mut node(iy, ey, NOW), &mut honest(&ia, &ea));
    assert!(refused.unwrap().contains("not valid before"));

    // Revoked: the checker holds a list naming the device's certificate.
    let (ir, er) = enrolled(&authority, 4, year());
    let mut checker = ea.clone();
    checker
        .accept_revocations(revocations(
            &authority,
            1,
            vec![Revocation::Certificate { issuer: authority.verifying_key(), serial: 4 }],
        ))
        .unwrap();
    let (_, refused) = link(&mut node(ir, er, NOW), &mut node(ia.clone(), checker, NOW));
    assert!(refused.unwrap().contains("revoked"));

    // The checker's own certificate is fine in the other direction: the responder refuses the initiator only.
    let (i5, e5) = enrolled(&authority, 5, year());
    assert_eq!(link(&mut node(i5, e5, NOW), &mut honest(&ia, &ea)), (None, None));
}

/// A roster closes the fleet's membership up to its time (issue 17): a device certified before it and not on it is
/// refused at the handshake, whoever issued its certificate; members, devices certified after it and the
/// intermediate authorities' own certificates are not affected.
#[test]
fn a_roster_refuses_devices_certified_before_it_that_it_does_not_list() {
    let org = SigningKey::generate().unwrap();
    let until = NOW - DAY / 2;
    let before = Validity::days_from(NOW - DAY, 365);
    let after = Validity { not_before_ms: until + 1, not_after_ms: NOW + 365 * DAY };
    let (member, outsider, newcomer) = (Device::new(), Device::new(), Device::new());
    let site = SigningKey::generate().unwrap();
    let site_cert = enrolment::issuing(&org, "north site", site.verifying_key(), 1, everything(), year()).unwrap();
    let (site_member, site_outsider) = (Device::new(), Device::new());
    let mut members = vec![member.signing.verifying_key(), site_member.signing.verifying_key()];
    members.sort();
    let roster = Revocation::Roster { members: members.clone(), until_ms: until };
    let list = RevocationList::decode(&revocations(&org, 1, vec![roster.clone()]).encode()).unwrap();
    let mut held = Revocations::new();
    assert!(held.accept(list, &[org.verifying_key()]).unwrap());
    assert_eq!(held.roster(), Some((members.as_slice(), until)));

    let checker = Device::new();
    let mut checker_enrolment =
        checker.enrol(vec![cert(&org, &checker, 9, everything(), year())], &[org.verifying_key()]);
    for list in held.lists() {
        checker_enrolment.accept_revocations(list.clone()).unwrap();
    }
    let link_from = |device: &Device, chain: Vec<Certificate>| {
        let e = device.enrol(chain, &[org.verifying_key()]);
        let mut checking = node(checker.identity.clone(), checker_enrolment.clone(), NOW);
        link(&mut node(device.identity.clone(), e, NOW), &mut checking).1
    };
    assert_eq!(link_from(&member, vec![cert(&org, &member, 2, everything(), before)]), None);
    assert_eq!(link_from(&newcomer, vec![cert(&org, &newcomer, 3, everything(), after)]), None);
    let refused = link_from(&outsider, vec![cert(&org, &outsider, 4, everything(), before)]).unwrap();
    assert!(refused.contains("is not on it"), "{refused}");
    // Through an intermediate authority: the site's own certificate is not a device's; its devices must be listed.
    assert_eq!(
        link_from(&site_member, vec![cert(&site, &site_member, 5, everything(), before), site_cert.clone()]),
        None
    );
    let refused = link_from(&site_outsider, vec![cert(&site, &site_outsider, 6, everything(), before), site_cert]);
    assert!(refused.unwrap().contains("is not on it"));
    // A renewed certificate of a member (same signing key) is on the roster whenever it starts.
    assert_eq!(link_from(&member, vec![cert(&org, &member, 7, everything(), after)]), None);

    // Bounds: one roster per list, members ascending and unique, at most MAX_ROSTER_MEMBERS.
    let malformed = |entries: Vec<Revocation>| {
        matches!(enrolment::revoke(&org, 2, NOW, entries), Err(CertificateError::Malformed(_)))
    };
    assert!(malformed(vec![roster.clone(), roster]));
    let unsorted: Vec<VerifyingKey> = members.iter().rev().copied().collect();
    assert!(malformed(vec![Revocation::Roster { members: unsorted, until_ms: until }]));
    assert!(malformed(vec![Revocation::Roster { members: vec![members[0], members[0]], until_ms: until }]));
    let many = |n: usize| {
        (0..n as u32)
            .map(|i| {
                let mut k = [0u8; 32];
                k[..4].copy_from_slice(&i.to_be_bytes());
                VerifyingKey(k)
            })
            .collect::<Vec<_>>()
    };
    assert!(malformed(vec![Revocation::Roster { members: many(MAX_ROSTER_MEMBERS + 1), until_ms: until }]));
    let full = enrolment::revoke(
        &org,
        2,
        NOW,
        vec![Revocation::Roster { members: many(MAX_ROSTER_MEMBERS), until_ms: until }],
    );
    assert!(RevocationList::decode(&full.unwrap().encode()).is_ok(), "a full roster fits a list's bytes");
}

/// An attacker who knows the pinned authority's public key (it ships in every app) drives a handshake by hand,
/// presenting `credentials`; returns the honest responder's error.
fn attack(honest: &Enrolment, honest_identity: &Identity, credentials: Vec<u8>) -> SecurityError {
    let access = Access::from(honest.clone());
    let attacker = Identity::generate().unwrap();
    let mut init = Handshake::new(&attacker, &access.psk(), b"shoal sync 1", true, &Sources::system())
        .unwrap()
        .presenting(credentials)
        .unwrap();
    let mut resp = Handshake::new(honest_identity, &access.psk(), b"shoal sync 1", false, &Sources::system())
        .unwrap()
        .presenting(access.credentials())
        .unwrap();
    let m1 = init.take_outgoing().unwrap().unwrap();
    resp.incoming(&m1).unwrap();
    let m2 = resp.take_outgoing().unwrap().unwrap();
    init.incoming(&m2).unwrap();
    let m3 = init.take_outgoing().unwrap().unwrap();
    resp.incoming(&m3).unwrap();
    let (creds, key) = resp.peer_credentials().unwrap();
    assert_eq!(key, attacker.device_key());
    access.check_peer(creds, key, NOW).map(|_| ()).map_err(SecurityError::from).unwrap_err()
}

#[test]
fn stolen_self_signed_and_missing_certificates_are_refused() {
    let authority = SigningKey::generate().unwrap();
    let (ia, ea) = enrolled(&authority, 1, year());
    // Someone else's valid certificate (copied off another phone): its Noise key is not the attacker's.
    let (_, victim) = enrolled(&authority, 2, year());
    let err = attack(&ea, &ia, victim.chain().encode());
    assert!(matches!(err, SecurityError::Certificate(CertificateError::WrongNoiseKey { .. })), "{err}");
    // A certificate the attacker signed itself for its own keys.
    let own = SigningKey::generate().unwrap();
    let self_signed = cert(&own, &Device::new(), 1, everything(), year());
    let err = attack(&ea, &ia, CertificateChain::single(self_signed).encode());
    assert!(matches!(err, SecurityError::Certificate(CertificateError::UnknownAuthority(_))), "{err}");
    // Nothing at all, and garbage.
    let err = attack(&ea, &ia, Vec::new());
    assert_eq!(err, SecurityError::Certificate(CertificateError::Missing));
    let err = attack(&ea, &ia, vec![7; 300]);
    assert!(matches!(err, SecurityError::Certificate(CertificateError::Malformed(_))), "{err}");
}

#[test]
fn the_initiator_checks_the_responder_before_presenting_its_own_certificate() {
    let authority = SigningKey::generate().unwrap();
    let (ia, ea) = enrolled(&authority, 1, year());
    let (ib, eb) = enrolled(&authority, 2, year());
    let mut revoked_b = ea.clone();
    revoked_b
        .accept_revocations(revocations(
            &authority,
            1,
            vec![Revocation::Certificate { issuer: authority.verifying_key(), serial: 2 }],
        ))
        .unwrap();
    // a dials b, which a's revocation list names: a fails on b's message, so its own certificate (in message 3)
    // is never sent — b sees the link end without ever learning who dialled.
    let mut a = node(ia, revoked_b, NOW);
    let mut b = node(ib, eb, NOW);
    let la = a.engine.add_link(TransportKind::Lan, true).unwrap();
    let lb = b.engine.add_link(TransportKind::Lan, false).unwrap();
    let m1 = a.engine.poll_frame(la).unwrap();
    b.engine.on_frame(lb, &m1);
    let m2 = b.engine.poll_frame(lb).unwrap();
    a.engine.on_frame(la, &m2);
    assert!(a.engine.is_closed(la));
    assert_eq!(a.engine.poll_frame(la), None, "message 3 (a's certificate) was never written");
    assert_eq!(b.engine.link_certificate(lb), None);
    let reason = std::iter::from_fn(|| a.engine.poll_event())
        .find_map(|e| match e {
            EngineEvent::LinkDown { reason, .. } => Some(reason),
            _ => None,
        })
        .unwrap();
    assert!(reason.contains("revoked"), "{reason}");
}

#[test]
fn credentials_are_bounded_and_never_sent_in_the_first_message() {
    let authority = SigningKey::generate().unwrap();
    let (ia, ea) = enrolled(&authority, 1, year());
    let access = Access::from(ea);
    let too_long = vec![0u8; shoaldb::security::MAX_CREDENTIALS + 1];
    let hs = Handshake::new(&ia, &access.psk(), b"p", true, &Sources::system()).unwrap();
    assert!(matches!(hs.presenting(too_long), Err(SecurityError::TooLarge { .. })));
    // The initiator's first message is the same size with and without credentials: they are not in it.
    let first = |creds: Vec<u8>| {
        let mut hs =
            Handshake::new(&ia, &access.psk(), b"p", true, &Sources::system()).unwrap().presenting(creds).unwrap();
        hs.take_outgoing().unwrap().unwrap().len()
    };
    assert_eq!(first(Vec::new()), first(access.credentials()));
    let _ = DeviceKey([0; 32]);
}

// ---- revocation lists spreading through the mesh ----

/// A store enrolled through the public API, and an engine on it (clock at `NOW`).
fn enrolled_engine(dir: &tempfile::TempDir, authority: &SigningKey, serial: u64) -> (Store, Engine) {
    enrolled_engine_with(dir, authority, serial, everything())
}

fn held_lists(store: &Store) -> usize {
    enrolment::load(store).unwrap().unwrap().revocations().lists().count()
}

fn reason(e: &mut Engine, link: shoaldb::sync::LinkId) -> Option<String> {
    std::iter::from_fn(|| e.poll_event()).find_map(|ev| match ev {
        EngineEvent::LinkDown { link: l, reason, .. } if l == link => Some(reason),
        _ => None,
    })
}

#[test]
fn a_revocation_issued_at_one_end_of_a_line_cuts_the_device_off_at_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let authority = SigningKey::generate().unwrap();
    // a – b – c – r, and later d (which never saw the list) meets a, and r tries b and d.
    let (stores, mut engines): (Vec<Store>, Vec<Engine>) =
        (1..=5).map(|serial| enrolled_engine(&dir, &authority, serial)).unzip();
    let (a, b, c, r, d) = (0, 1, 2, 3, 4);
    let wire = |engines: &mut Vec<Engine>, x: usize, y: usize| {
        let lx = engines[x].add_link(TransportKind::Lan, true).unwrap();
        let ly = engines[y].add_link(TransportKind::Lan, false).unwrap();
        (x, lx, y, ly)
    };
    let mut wires = vec![wire(&mut engines, a, b), wire(&mut engines, b, c), wire(&mut engines, c, r)];
    wires::settle(&mut engines, &wires, None);
    let (_, lc_r, _, lr_c) = wires[2];
    assert!(!engines[c].is_closed(lc_r) && engines[c].link_certificate(lc_r).is_some(), "r is linked to c");
    stores[r].upsert("notes", json!({"_id": "before", "from": "r"})).unwrap();
    wires::settle(&mut engines, &wires, None);
    assert!(stores[a].get("notes", "before").unwrap().is_some(), "r's earlier write crossed the line");
    for e in engines.iter_mut() {
        while e.poll_event().is_some() {}
    }

    // The authority's list reaches a (only a): it spreads to b and c, and c cuts r off at once.
    let list =
        revocations(&authority, 1, vec![Revocation::Certificate { issuer: authority.verifying_key(), serial: 4 }]);
    assert!(engines[a].add_revocations(list.clone()).unwrap());
    assert!(!engines[a].add_revocations(list).unwrap(), "the same list again is not news");
    wires::settle(&mut engines, &wires, None);
    assert!(engines[c].is_closed(lc_r), "c closed its link to the revoked r");
    let why = reason(&mut engines[c], lc_r).unwrap();
    assert!(why.contains("revoked: certificate 4"), "{why}");
    for s in [&stores[a], &stores[b], &stores[c]] {
        assert_eq!(held_lists(s), 1, "every device on the line keeps the list");
    }
    // r's later writes reach nobody; its link is gone.
    stores[r].upsert("notes", json!({"_id": "after", "from": "r"})).unwrap();
    let _ = lr_c;
    wires::settle(&mut engines, &wires, None);
    assert!(stores[c].get("notes", "after").unwrap().is_none());

    // d never saw the list: meeting a, it gets the list first thing, keeps it, and then refuses r itself.
    assert_eq!(held_lists(&stores[d]), 0);
    wires.push(wire(&mut engines, d, a));
    wires::settle(&mut engines, &wires, None);
    assert_eq!(held_lists(&stores[d]), 1);
    for x in [b, d] {
        let w = wire(&mut engines, r, x);
        wires.push(w);
        wires::settle(&mut engines, &wires, None);
        assert!(engines[x].is_closed(w.3), "device {x} refused the revoked r");
        assert!(reason(&mut engines[x], w.3).unwrap().contains("revoked"));
    }
    for s in &stores[..3] {
        assert!(s.get("notes", "after").unwrap().is_none(), "nothing r wrote after its revocation arrived anywhere");
    }
    // The list outlives a restart: a reloaded enrolment still refuses r.
    let reloaded = enrolment::load(&stores[b]).unwrap().unwrap();
    let r_chain = enrolment::load(&stores[r]).unwrap().unwrap().chain().clone();
    assert!(matches!(
        r_chain.verify(reloaded.authorities(), reloaded.revocations(), NOW),
        Err(CertificateError::Revoked(_))
    ));
}

#[test]
fn revocation_lists_are_checked_before_they_spread() {
    let dir = tempfile::tempdir().unwrap();
    let authority = SigningKey::generate().unwrap();
    let stranger = SigningKey::generate().unwrap();
    let (_sa, mut a) = enrolled_engine(&dir, &authority, 1);
    // A list from a key the app does not pin is refused, and nothing is kept.
    assert!(a.add_revocations(revocations(&stranger, 1, Vec::new())).is_err());
    // A device in development mode has no authority to check a list against.
    let mut dev = node(Identity::generate().unwrap(), AppSecret::from_bytes(b"s").unwrap(), NOW);
    assert!(dev.engine.add_revocations(revocations(&authority, 1, Vec::new())).is_err());
}

// ---- read grants ----

#[test]
fn read_grants_decide_what_each_device_receives_also_through_a_relay() {
    let dir = tempfile::tempdir().unwrap();
    let authority = SigningKey::generate().unwrap();
    let g = |t: &str| Grant::parse(t).unwrap();
    let (a, b, r, c) = (0, 1, 2, 3);
    let grants = [
        everything(),
        vec![g("read tasks where team == \"north\""), g("read tasks where owner == $device"), g("write *")],
        vec![g("read notes"), g("write *")],
        everything(),
    ];
    let (stores, mut engines): (Vec<Store>, Vec<Engine>) = grants
        .into_iter()
        .enumerate()
        .map(|(i, grants)| enrolled_engine_with(&dir, &authority, i as u64 + 1, grants))
        .unzip();
    let b_id = enrolment::load(&stores[b]).unwrap().unwrap().signing_key().verifying_key().device_id().to_string();
    let mut wires = Vec::new();
    for (x, y) in [(a, b), (a, r), (r, c)] {
        let lx = engines[x].add_link(TransportKind::Lan, true).unwrap();
        let ly = engines[y].add_link(TransportKind::Lan, false).unwrap();
        wires.push((x, lx, y, ly));
    }
    stores[a].upsert("tasks", json!({"_id": "north", "team": "north"})).unwrap();
    stores[a].upsert("tasks", json!({"_id": "south", "team": "south"})).unwrap();
    stores[a].upsert("tasks", json!({"_id": "mine", "team": "east", "owner": b_id})).unwrap();
    stores[a].upsert("notes", json!({"_id": "n", "text": "for everyone who reads notes"})).unwrap();
    wires::settle(&mut engines, &wires, None);
    let ids = |s: &Store, coll: &str| -> Vec<String> {
        s.list(coll).unwrap().iter().map(|d| d["_id"].as_str().unwrap().to_string()).collect()
    };
    assert_eq!(ids(&stores[b], "tasks"), ["mine", "north"], "b: its team's tasks and its own, nothing else");
    assert!(ids(&stores[b], "notes").is_empty(), "b may not read notes");
    assert!(ids(&stores[r], "tasks").is_empty(), "the relay may not read tasks, so it never receives them");
    assert_eq!(ids(&stores[r], "notes"), ["n"]);
    assert!(ids(&stores[c], "tasks").is_empty(), "c reads everything, but its only path runs through the relay");
    assert_eq!(ids(&stores[c], "notes"), ["n"], "the relay forwards what it may read");

    // An edit elsewhere moves a document into b's rules: it arrives.
    stores[a].update("tasks", "south", |ed| Ok(ed.set("team", "north")?)).unwrap();
    wires::settle(&mut engines, &wires, None);
    assert_eq!(ids(&stores[b], "tasks"), ["mine", "north", "south"]);
    // One moving out of them is not sent any more: b keeps its last readable version and learns nothing new.
    stores[a]
        .update("tasks", "north", |ed| {
            ed.set("team", "west")?;
            Ok(ed.set("secret", 1i64)?)
        })
        .unwrap();
    wires::settle(&mut engines, &wires, None);
    assert_eq!(stores[b].get("tasks", "north").unwrap().unwrap()["team"], "north");
    assert_eq!(stores[a].get("tasks", "north").unwrap().unwrap()["secret"], 1);
}

#[test]
fn attachment_bytes_go_only_to_devices_that_may_read_a_document_holding_them() {
    use shoaldb::sync::FetchEvent;
    let dir = tempfile::tempdir().unwrap();
    let authority = SigningKey::generate().unwrap();
    let g = |t: &str| Grant::parse(t).unwrap();
    let (sa, a) = enrolled_engine_with(&dir, &authority, 1, everything());
    let (sb, b) = enrolled_engine_with(&dir, &authority, 2, vec![g("read notes"), g("write *")]);
    let secret = sa.put_attachment_bytes(b"the plans", Default::default()).unwrap();
    let shared = sa.put_attachment_bytes(b"the minutes", Default::default()).unwrap();
    sa.upsert("tasks", json!({"_id": "t", "file": secret.to_json()})).unwrap();
    sa.upsert("notes", json!({"_id": "n", "file": shared.to_json()})).unwrap();
    let mut engines = vec![a, b];
    let la = engines[0].add_link(TransportKind::Lan, true).unwrap();
    let lb = engines[1].add_link(TransportKind::Lan, false).unwrap();
    let wires = [(0, la, 1, lb)];
    wires::settle(&mut engines, &wires, None);
    assert!(sb.get("notes", "n").unwrap().is_some() && sb.get("tasks", "t").unwrap().is_none());
    // b knows (or guesses) both hashes; it gets only the bytes of the one a document it may read holds.
    for token in [&secret, &shared] {
        engines[1].fetch_attachment(token.hash, token.len).unwrap();
    }
    wires::settle(&mut engines, &wires, None);
    let mut failed = Vec::new();
    while let Some(ev) = engines[1].poll_event() {
        if let EngineEvent::Fetch(FetchEvent::Failed { hash, .. }) = ev {
            failed.push(hash);
        }
    }
    assert!(sb.has_attachment(&shared).unwrap(), "the attachment of a note b may read");
    assert!(!sb.has_attachment(&secret).unwrap(), "the attachment of a task b may not read");
    assert_eq!(failed, vec![secret.hash]);
}

#[test]
fn the_attachment_read_check_looks_up_the_documents_naming_the_hash_also_in_a_store_of_an_older_version() {
    use shoaldb::Replica;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = Store::open(&path).unwrap();
    let notes = Permissions::new(vec![Grant::parse("read notes").unwrap()]).read_rules(store.peer_id());
    let plans = store.put_attachment_bytes(b"the plans", Default::default()).unwrap();
    let minutes = store.put_attachment_bytes(b"the minutes", Default::default()).unwrap();
    let other = store.put_attachment_bytes(b"other", Default::default()).unwrap();
    store.upsert("tasks", json!({"_id": "t", "file": plans.to_json()})).unwrap();
    // Deep in a note: a token inside a list inside an object, and a large value kept beside the view.
    let big = "x".repeat(40_000);
    store.upsert("notes", json!({"_id": "n", "a": {"b": [1, minutes.to_json()]}, "big": {"text": big}})).unwrap();
    store.upsert("notes", json!({"_id": "m", "big": ["y".repeat(40_000), other.to_json()]})).unwrap();
    // A note that only mentions the plans' hash in its text does not refer to the attachment.
    store.upsert("notes", json!({"_id": "q", "text": format!("\"_attachment\":\"{}\"", plans.hash_hex())})).unwrap();
    let readable = |s: &Store, t: &shoaldb::AttachmentToken| s.replica().attachment_readable(&t.hash, &notes).unwrap();
    let expect = |s: &Store| {
        assert!(!readable(s, &plans), "named by a task only");
        assert!(readable(s, &minutes), "named deep in a note");
        assert!(readable(s, &other), "named in a large value of a note");
    };
    expect(&store);
    store.checkpoint().unwrap();
    drop(store);

    // The index is a lookup, not a scan of every view.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let plan: Vec<String> = conn
        .prepare(
            "EXPLAIN QUERY PLAN SELECT d.doc FROM attachment_refs r JOIN docs d ON d.doc = r.doc \
             WHERE r.hash = ?1 AND d.view IS NOT NULL LIMIT 10",
        )
        .unwrap()
        .query_map([&plans.hash[..]], |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(plan.iter().all(|step| step.starts_with("SEARCH")), "{plan:?}");

    // A store written before the index existed (schema 6) gets it filled when it is opened.
    conn.execute_batch(
        "DROP TABLE attachment_refs; DROP TABLE indexes; DROP INDEX docs_with_parts; DROP TABLE gc_marks; \
         DROP TABLE folded; DROP TABLE attested; DROP TABLE attested_changes; DROP INDEX docs_stale; \
         ALTER TABLE docs DROP COLUMN stale; DROP TABLE peer_acks; ALTER TABLE docs DROP COLUMN modified; \
         ALTER TABLE docs DROP COLUMN used; ALTER TABLE blobs DROP COLUMN used; DROP TABLE expiry; \
         ALTER TABLE snapshots DROP COLUMN tombstones; ALTER TABLE changes DROP COLUMN parts; \
         DROP INDEX docs_unversioned; ALTER TABLE docs DROP COLUMN version; DROP TABLE unsettled; PRAGMA user_version = 6;",
    )
    .unwrap();
    drop(conn);
    expect(&Store::open(&path).unwrap());
}
