//! Signed changes and write permissions (issue 14), over real sync engines with certificates: every change is
//! signed by its author's device and checked by every receiver, relays included — a read-only device's writes, a
//! write outside the permitted fields or documents, a forged, unsigned or revoked change are each refused alone,
//! with a typed reason, everywhere; relays forward signed changes they may not write themselves; write filters are
//! evaluated on the document as its author saw it, so every device decides alike whatever the order of arrival;
//! and an author that signs two different changes for one counter leaves proof of it.

#[path = "common/enrolled.rs"]
mod enrolled;
#[path = "common/wires.rs"]
mod wires;

use enrolled::{engine_on, enrolled_engine_with, everything, grants, NOW};
use serde_json::json;
use shoaldb::enrolment;
use shoaldb::security::{Grant, RefusalReason, Refused, Revocation, SigningKey};
use shoaldb::store::{Replica, Summary};
use shoaldb::sync::wire::{Message, WireChange};
use shoaldb::sync::{Engine, EngineEvent, TransportKind};
use shoaldb::{PeerId, Store};

struct Mesh {
    stores: Vec<Store>,
    engines: Vec<Engine>,
    wires: Vec<wires::Wire>,
    _dir: tempfile::TempDir,
}

/// Enrolled devices with `grants` each (serials 1, 2, …), linked as `links` say (not settled yet).
fn mesh(authority: &SigningKey, grants: Vec<Vec<Grant>>, links: &[(usize, usize)]) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let (stores, engines): (Vec<Store>, Vec<Engine>) =
        grants.into_iter().enumerate().map(|(i, g)| enrolled_engine_with(&dir, authority, i as u64 + 1, g)).unzip();
    let mut m = Mesh { stores, engines, wires: Vec::new(), _dir: dir };
    for &(x, y) in links {
        m.link(x, y);
    }
    m
}

impl Mesh {
    fn link(&mut self, x: usize, y: usize) -> wires::Wire {
        let lx = self.engines[x].add_link(TransportKind::Lan, true).unwrap();
        let ly = self.engines[y].add_link(TransportKind::Lan, false).unwrap();
        self.wires.push((x, lx, y, ly));
        (x, lx, y, ly)
    }

    fn settle(&mut self) {
        wires::settle(&mut self.engines, &self.wires, None);
    }

    /// The refusals device `x` reported since last asked.
    fn refusals(&mut self, x: usize) -> Vec<Refused> {
        let mut out = Vec::new();
        while let Some(ev) = self.engines[x].poll_event() {
            if let EngineEvent::Refused { refusals, .. } = ev {
                out.extend(refusals);
            }
        }
        out
    }

    fn device_id(&self, x: usize) -> PeerId {
        enrolment::load(&self.stores[x]).unwrap().unwrap().signing_key().verifying_key().device_id()
    }

    fn doc(&self, x: usize, id: &str) -> Option<serde_json::Value> {
        self.stores[x].get("tasks", id).unwrap()
    }
}

fn not_permitted(r: &Refused, doc: &str, what: &str) -> bool {
    r.doc_id == doc && matches!(&r.reason, RefusalReason::NotPermitted(s) if s.contains(what))
}

#[test]
fn a_read_only_devices_writes_are_refused_by_every_peer_including_relays() {
    let authority = SigningKey::generate().unwrap();
    // reader – relay – b, and later reader – b directly.
    let mut m = mesh(&authority, vec![grants(&["read *"]), everything(), everything()], &[(0, 1), (1, 2)]);
    let (reader, relay, b) = (0, 1, 2);
    m.stores[b].upsert("tasks", json!({"_id": "from-b"})).unwrap();
    let err = m.stores[reader].upsert("tasks", json!({"_id": "from-reader"})).unwrap_err();
    assert!(matches!(err, shoaldb::Error::NotPermitted { .. }), "its own store refuses first: {err}");
    m.settle();
    // Signed by the reader's key all the same (a modified app), and sent.
    let forged =
        signed_below_the_store(&m.stores[reader], |s| s.upsert("tasks", json!({"_id": "from-reader"})).map(drop));
    let (_, lr, _, _) = m.wires[0];
    m.engines[reader].send_raw(lr, &Message::Changes { changes: forged.clone() }.encode()).unwrap();
    m.settle();
    assert!(m.doc(reader, "from-b").is_some(), "the reader reads");
    for x in [relay, b] {
        assert!(m.doc(x, "from-reader").is_none(), "device {x} took the read-only device's write");
    }
    let refused = m.refusals(relay);
    assert!(
        refused.iter().any(|r| not_permitted(r, "from-reader", "writing collection \"tasks\"")),
        "the relay says why: {refused:?}"
    );
    assert!(m.refusals(b).is_empty(), "b never even received it: the relay did not take it");
    // Sent to b directly, b refuses it too.
    let (_, lb, _, _) = m.link(reader, b);
    m.settle();
    m.engines[reader].send_raw(lb, &Message::Changes { changes: forged }.encode()).unwrap();
    m.settle();
    assert!(m.doc(b, "from-reader").is_none());
    assert!(m.refusals(b).iter().any(|r| not_permitted(r, "from-reader", "tasks")));
}

#[test]
fn a_relay_forwards_signed_changes_it_may_not_itself_write() {
    let authority = SigningKey::generate().unwrap();
    // a – relay – b, the relay reading everything and writing nothing.
    let mut m = mesh(&authority, vec![everything(), grants(&["read *"]), everything()], &[(0, 1), (1, 2)]);
    let (a, relay, b) = (0, 1, 2);
    m.stores[a].upsert("tasks", json!({"_id": "t", "from": "a"})).unwrap();
    m.stores[b].upsert("tasks", json!({"_id": "u", "from": "b"})).unwrap();
    m.settle();
    for x in [a, relay, b] {
        assert_eq!(m.doc(x, "t").unwrap()["from"], "a", "device {x}");
        assert_eq!(m.doc(x, "u").unwrap()["from"], "b", "device {x}");
    }
    // The changes reached the far end as their authors signed them: b holds a's change with a's signature.
    let entries = m.stores[b].replica().log_missing(&Summary::new(), &Summary::new(), usize::MAX).unwrap();
    let t = entries.iter().find(|e| e.doc_id == "t").unwrap();
    assert_eq!(t.signature.as_ref().map(|s| s.device), Some(m.device_id(a)));
    assert!(m.refusals(a).is_empty() && m.refusals(b).is_empty() && m.refusals(relay).is_empty());
}

#[test]
fn a_write_outside_the_permitted_fields_is_refused_while_a_permitted_one_is_accepted() {
    let authority = SigningKey::generate().unwrap();
    // fieldwork – relay – office
    let fieldwork = grants(&["read *", "write tasks fields status, notes"]);
    let mut m = mesh(&authority, vec![fieldwork, everything(), everything()], &[(0, 1), (1, 2)]);
    let (f, relay, office) = (0, 1, 2);
    m.stores[office].upsert("tasks", json!({"_id": "t", "status": "open", "assignee": "ann", "notes": {}})).unwrap();
    m.settle();
    m.stores[f].update("tasks", "t", |ed| Ok(ed.set("status", "done")?)).unwrap();
    // The device's own store refuses what its certificate does not allow, changing nothing…
    let err = m.stores[f].update("tasks", "t", |ed| Ok(ed.set("assignee", "fred")?)).unwrap_err();
    assert!(matches!(&err, shoaldb::Error::NotPermitted { reason, .. } if reason.contains("field assignee")), "{err}");
    let err = m.stores[f]
        .write(|t| {
            // …even when the app carries on after the error inside its transaction.
            let _ = t.update("tasks", "t", |ed| Ok(ed.set("assignee", "fred")?));
            t.update("tasks", "t", |ed| Ok(ed.set("status", "lost")?))
        })
        .unwrap_err();
    assert!(matches!(err, shoaldb::Error::NotPermitted { .. }), "{err}");
    assert_eq!(m.doc(f, "t").unwrap()["assignee"], "ann");
    assert_eq!(m.doc(f, "t").unwrap()["status"], "done");
    m.stores[f].update("tasks", "t", |ed| Ok(ed.set("notes.text", "fixed the pump")?)).unwrap();
    assert!(m.stores[f].upsert("tasks", json!({"_id": "new", "status": "open"})).is_err());
    m.settle();
    // A device that does not hold back (a modified app, or one writing below the store) is refused by every
    // receiver: its signed change to a field outside its grant, beside a permitted one, in one batch. (A refused
    // change holds back its author's later changes to the same document, which depend on it: the permitted one
    // comes first.)
    let forged = signed_below_the_store(&m.stores[f], |s| {
        s.update("tasks", "t", |ed| Ok(ed.set("notes.more", "also permitted")?))?;
        s.update("tasks", "t", |ed| Ok(ed.set("assignee", "fred")?))?;
        s.upsert("tasks", json!({"_id": "made", "status": "open"})).map(drop)
    });
    assert_eq!(forged.len(), 3);
    let (_, lf, _, _) = m.wires[0];
    m.engines[f].send_raw(lf, &Message::Changes { changes: forged }.encode()).unwrap();
    m.settle();
    for x in [relay, office] {
        let t = m.doc(x, "t").unwrap();
        assert_eq!(t["status"], "done", "device {x}: the permitted field changed");
        assert_eq!(t["notes"]["text"], "fixed the pump", "device {x}: inside a permitted field");
        assert_eq!(t["assignee"], "ann", "device {x}: the field outside the grant did not");
        assert!(m.doc(x, "new").is_none(), "device {x}: creating a document needs a grant on every field");
    }
    assert_eq!(m.doc(office, "t").unwrap()["notes"]["more"], "also permitted", "the permitted change beside it");
    let refused = m.refusals(relay);
    assert!(refused.iter().any(|r| not_permitted(r, "t", "field assignee")), "{refused:?}");
    assert!(refused.iter().any(|r| not_permitted(r, "made", "the document itself")), "{refused:?}");
    assert_eq!(refused.len(), 2, "only those two: {refused:?}");
}

/// Changes signed with `device`'s key by `write`, as a device would make them that does not hold back (a modified
/// app): `write` runs on a second store holding `device`'s data and signing key but not its certificate.
fn signed_below_the_store(device: &Store, write: impl FnOnce(&Store) -> shoaldb::Result<()>) -> Vec<WireChange> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shadow.db");
    // The device's own key vault: the shadow signs with its key.
    let vault = shoaldb::security::FileVault::new(format!("{}-keys", device.path().display()));
    let options = || shoaldb::Options { keys: Some(std::sync::Arc::new(vault.clone())), ..Default::default() };
    let shadow = Store::open_with(&path, options()).unwrap();
    shadow.replica().apply_changes(&device.replica().changes_since(&Summary::new()).unwrap()).unwrap();
    drop(shadow);
    let shadow = Store::open_with(&path, options()).unwrap();
    write(&shadow).unwrap();
    let have = device.replica().summary().unwrap();
    let entries = shadow.replica().log_missing(&have, &Summary::new(), usize::MAX).unwrap();
    entries.iter().map(|e| WireChange::signed(e.to_wire(), e.signature.clone())).collect()
}

#[test]
fn write_filters_follow_the_document_as_its_author_saw_it_whatever_the_order_of_arrival() {
    let authority = SigningKey::generate().unwrap();
    // o may write the tasks it owns; a, p1 and p2 everything. Links are made as the test goes.
    let owner = grants(&["read *", "write tasks where owner == $device"]);
    let mut m = mesh(&authority, vec![owner, everything(), everything(), everything()], &[]);
    let (o, a, p1, p2) = (0, 1, 2, 3);
    let o_id = m.device_id(o).to_string();
    m.stores[a].upsert("tasks", json!({"_id": "mine", "owner": o_id, "n": 0})).unwrap();
    m.stores[a].upsert("tasks", json!({"_id": "theirs", "owner": "someone", "n": 0})).unwrap();
    let o_a = m.link(o, a);
    let lo = o_a.1;
    m.settle();
    m.stores[o].update("tasks", "mine", |ed| Ok(ed.set("n", 1i64)?)).unwrap();
    m.stores[o].upsert("tasks", json!({"_id": "new", "owner": o_id})).unwrap();
    assert!(m.stores[o].update("tasks", "theirs", |ed| Ok(ed.set("n", 1i64)?)).is_err(), "not o's");
    assert!(m.stores[o].upsert("tasks", json!({"_id": "gift", "owner": "someone"})).is_err(), "not o's");
    let forged = signed_below_the_store(&m.stores[o], |s| {
        s.update("tasks", "theirs", |ed| Ok(ed.set("n", 1i64)?))?;
        s.upsert("tasks", json!({"_id": "gift", "owner": "someone"})).map(drop)
    });
    m.settle();
    m.engines[o].send_raw(lo, &Message::Changes { changes: forged }.encode()).unwrap();
    m.settle();
    assert_eq!(m.doc(a, "mine").unwrap()["n"], 1);
    assert_eq!(m.doc(a, "theirs").unwrap()["n"], 0);
    assert!(m.doc(a, "new").is_some(), "a document created matching the filter");
    assert!(m.doc(a, "gift").is_none(), "a document created outside it");
    let refused = m.refusals(a);
    assert_eq!(refused.iter().map(|r| r.doc_id.as_str()).collect::<Vec<_>>(), ["theirs", "gift"]);

    // Offline, concurrently: o edits "mine" while a gives it to someone else. o's edit was made on a document o
    // owned, so every device takes it — p1 receiving the reassignment first, p2 o's edit first.
    m.wires.clear();
    m.stores[o].update("tasks", "mine", |ed| Ok(ed.set("n", 2i64)?)).unwrap();
    m.stores[a].update("tasks", "mine", |ed| Ok(ed.set("owner", "x")?)).unwrap();
    let p1_a = m.link(p1, a);
    m.settle();
    let p1_o = m.link(p1, o);
    m.settle();
    m.wires.clear();
    let p2_o = m.link(p2, o);
    m.settle();
    let p2_a = m.link(p2, a);
    m.settle();
    let expected = json!({"_id": "mine", "owner": "x", "n": 2});
    for x in [p1, p2] {
        assert_eq!(m.doc(x, "mine").unwrap(), expected, "device {x}");
        assert!(m.refusals(x).iter().all(|r| r.doc_id != "mine"), "device {x} refused o's edit");
    }
    // Now that o has seen the reassignment, its next edit of "mine" is refused: by its own store, and (signed
    // below the store) everywhere.
    m.wires = vec![o_a, p1_a, p1_o, p2_o, p2_a];
    m.settle();
    let links = [o_a.1, p1_o.3, p2_o.3];
    assert!(m.stores[o].update("tasks", "mine", |ed| Ok(ed.set("n", 3i64)?)).is_err());
    let forged = signed_below_the_store(&m.stores[o], |s| s.update("tasks", "mine", |ed| Ok(ed.set("n", 3i64)?)));
    for l in links {
        m.engines[o].send_raw(l, &Message::Changes { changes: forged.clone() }.encode()).unwrap();
    }
    m.settle();
    for x in [a, p1, p2] {
        assert_eq!(m.doc(x, "mine").unwrap(), expected, "device {x}");
        let refused = m.refusals(x);
        assert!(refused.iter().any(|r| not_permitted(r, "mine", "filter")), "device {x}: {refused:?}");
    }
    assert_eq!(m.stores[p1].replica().summary().unwrap(), m.stores[p2].replica().summary().unwrap());
}

#[test]
fn forged_unsigned_and_unknown_signers_changes_are_refused_alone() {
    let authority = SigningKey::generate().unwrap();
    // victim – b – attacker: the attacker is enrolled and may write everything, but only as itself.
    let mut m = mesh(&authority, vec![everything(), everything(), everything()], &[(0, 1)]);
    let (victim, b, attacker) = (0, 1, 2);
    m.stores[victim].upsert("tasks", json!({"_id": "v", "n": 1})).unwrap();
    m.settle();
    m.stores[attacker].upsert("tasks", json!({"_id": "intro"})).unwrap();
    let (_, la, _, _) = m.link(attacker, b);
    m.settle();
    let victim_author = m.stores[victim].author_id().unwrap();
    let next =
        m.stores[b].replica().summary().unwrap().peers().find(|(p, _)| *p == victim_author).unwrap().1.count() + 1;

    // The attacker's own, honestly signed changes: one (sent before) to forge from, one to send beside the forgeries.
    m.stores[attacker].upsert("tasks", json!({"_id": "honest", "n": 1})).unwrap();
    let entries = m.stores[attacker].replica().log_missing(&Summary::new(), &Summary::new(), usize::MAX).unwrap();
    let entry = |id: &str| entries.iter().find(|e| e.doc_id == id).unwrap();
    let (evil, honest) = (entry("intro"), entry("honest"));
    let mut as_victim = shoaldb::DocChange::decode(&evil.to_wire()).unwrap();
    as_victim.doc_id = "evil".into();
    as_victim.change.peer = victim_author;
    as_victim.change.start = next;
    let forged = WireChange::signed(as_victim.encode(), evil.signature.clone());
    let mut claimed = forged.clone();
    if let Some(s) = claimed.signature.as_mut() {
        s.device = m.device_id(victim);
    }
    let mut unknown = forged.clone();
    if let Some(s) = unknown.signature.as_mut() {
        s.device = PeerId(12345);
    }
    let unsigned = WireChange::unsigned(forged.change.clone());
    let mut altered = shoaldb::DocChange::decode(&evil.to_wire()).unwrap();
    altered.doc_id = "altered".into();
    let altered = WireChange::signed(altered.encode(), evil.signature.clone());
    let good = WireChange::signed(honest.to_wire(), honest.signature.clone());
    let batch = vec![forged, claimed, unknown, unsigned, altered, good];
    m.engines[attacker].send_raw(la, &Message::Changes { changes: batch }.encode()).unwrap();
    m.settle();

    let reasons: Vec<RefusalReason> = m.refusals(b).into_iter().map(|r| r.reason).collect();
    let victim_device = m.device_id(victim);
    assert_eq!(
        reasons,
        [
            RefusalReason::NotAuthor { device: m.device_id(attacker) },
            RefusalReason::BadSignature,
            RefusalReason::UnknownSigner(PeerId(12345)),
            RefusalReason::Unsigned,
            RefusalReason::BadSignature,
        ],
        "(victim {victim_device})"
    );
    assert_eq!(m.doc(b, "honest").unwrap()["n"], 1, "the honest change beside them was applied");
    for x in [victim, b] {
        assert!(m.doc(x, "evil").is_none() && m.doc(x, "altered").is_none(), "device {x}");
    }
    // The victim was not made to move off its author id, and writes on.
    assert_eq!(m.stores[victim].author_id().unwrap(), victim_author);
    m.stores[victim].upsert("tasks", json!({"_id": "v", "n": 2})).unwrap();
    m.settle();
    assert_eq!(m.doc(b, "v").unwrap()["n"], 2);
    assert!(!m.engines[b].is_closed(m.wires[1].3), "a refused change closes nothing");
}

#[test]
fn a_revoked_author_is_accepted_only_up_to_its_counter() {
    let authority = SigningKey::generate().unwrap();
    let mut m = mesh(&authority, vec![everything(), everything(), everything()], &[(0, 1), (1, 2)]);
    let (x, relay, b) = (0, 1, 2);
    m.stores[x].upsert("tasks", json!({"_id": "before"})).unwrap();
    m.settle();
    let author = m.stores[x].author_id().unwrap();
    let until = m.stores[relay].replica().summary().unwrap().peers().find(|(p, _)| *p == author).unwrap().1.count();
    let list =
        enrolment::revoke(&authority, 1, NOW, vec![Revocation::Author { author, accept_until: Some(until) }]).unwrap();
    assert!(m.engines[b].add_revocations(list).unwrap());
    m.settle();
    m.stores[x].upsert("tasks", json!({"_id": "after"})).unwrap();
    m.settle();
    for y in [relay, b] {
        assert!(m.doc(y, "before").is_some(), "device {y} keeps what came before");
        assert!(m.doc(y, "after").is_none(), "device {y} took a change past the revocation");
    }
    assert!(m.refusals(relay).iter().any(|r| r.doc_id == "after" && matches!(r.reason, RefusalReason::Revoked(_))));
}

#[test]
fn an_author_signing_two_changes_for_one_counter_leaves_proof() {
    let authority = SigningKey::generate().unwrap();
    let mut m = mesh(&authority, vec![everything(), everything(), everything()], &[]);
    let (e, a, b) = (0, 1, 2);
    m.stores[e].upsert("tasks", json!({"_id": "first"})).unwrap();
    m.stores[e].checkpoint().unwrap();
    // A second copy of e — database, its epoch and its key vault together, so it is not taken for a restored
    // backup — writes other changes under the same author and counters.
    let copy_dir = tempfile::tempdir().unwrap();
    let path = m.stores[e].path().to_path_buf();
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    for f in std::fs::read_dir(path.parent().unwrap()).unwrap() {
        let f = f.unwrap();
        if !f.file_name().to_str().unwrap().starts_with(&name) {
            continue;
        }
        if f.path().is_dir() {
            std::fs::create_dir(copy_dir.path().join(f.file_name())).unwrap();
            for entry in std::fs::read_dir(f.path()).unwrap() {
                let entry = entry.unwrap();
                std::fs::copy(entry.path(), copy_dir.path().join(f.file_name()).join(entry.file_name())).unwrap();
            }
        } else {
            std::fs::copy(f.path(), copy_dir.path().join(f.file_name())).unwrap();
        }
    }
    let twin = Store::open(copy_dir.path().join(&name)).unwrap();
    assert_eq!(twin.author_id().unwrap(), m.stores[e].author_id().unwrap());
    m.stores[e].upsert("tasks", json!({"_id": "one"})).unwrap();
    twin.upsert("tasks", json!({"_id": "other"})).unwrap();
    m.stores.push(twin.clone());
    m.engines.push(engine_on(&twin, 1));
    let twin_ix = m.stores.len() - 1;
    m.link(e, a);
    m.link(twin_ix, b);
    m.settle();
    m.wires.clear();
    m.link(a, b);
    m.settle();
    let key = enrolment::load(&m.stores[e]).unwrap().unwrap().signing_key().verifying_key();
    let found: Vec<_> = [a, b].iter().flat_map(|&x| m.stores[x].equivocations().unwrap()).collect();
    assert!(!found.is_empty(), "nobody noticed");
    for eq in &found {
        assert!(eq.proves(&key), "the record is signed proof: {eq:?}");
        assert!(!eq.proves(&authority.verifying_key()), "and proves nothing against another key");
    }
}

#[test]
fn presence_records_are_signed_by_the_device_they_describe() {
    use shoaldb::security::{PresenceSignature, Signature};
    let authority = SigningKey::generate().unwrap();
    // a – b – c, and an enrolled attacker m – b.
    let mut m = mesh(&authority, vec![everything(), everything(), everything(), everything()], &[(0, 1), (1, 2)]);
    let (a, b, c, attacker) = (0, 1, 2, 3);
    let (_, lm, _, _) = m.link(attacker, b);
    m.settle();
    let a_key = m.engines[a].device_key();
    let seen_from = |m: &Mesh, x: usize| m.engines[x].peers().into_iter().find(|p| p.device == a_key);
    let at_c = seen_from(&m, c).expect("c learns of a through b");
    assert_eq!((at_c.name.as_str(), at_c.hops), ("device 1", 2));
    // The attacker announces a record for a: unsigned, then with its own signature.
    let fake = |signature| Message::Presence {
        origin: a_key.0,
        seq: NOW + 1_000,
        name: "impostor".into(),
        links: Vec::new(),
        signature,
    };
    let own = PresenceSignature { device: m.device_id(attacker), signature: Signature([7; 64]) };
    for msg in [fake(None), fake(Some(own))] {
        m.engines[attacker].send_raw(lm, &msg.encode()).unwrap();
    }
    m.settle();
    for x in [b, c] {
        let seen = seen_from(&m, x).unwrap();
        assert_eq!(seen.name, "device 1", "device {x} took the forged record");
    }
    assert_eq!(seen_from(&m, c).unwrap().hops, 2, "a's links as a announced them");
}

#[test]
fn certificate_chains_that_lead_nowhere_close_only_their_link() {
    use shoaldb::sync::wire::MAX_CHAINS_PER_MESSAGE;
    let authority = SigningKey::generate().unwrap();
    let stranger = SigningKey::generate().unwrap();
    // b linked to a (honest) and to three attackers, each sending one kind of bad chain message.
    let mut m = mesh(&authority, vec![everything(); 5], &[(0, 1)]);
    let (a, b) = (0, 1);
    let foreign = {
        let dir = tempfile::tempdir().unwrap();
        let (s, _) = enrolled_engine_with(&dir, &stranger, 9, everything());
        enrolment::load(&s).unwrap().unwrap().chain().encode()
    };
    let own = enrolment::load(&m.stores[2]).unwrap().unwrap().chain().encode();
    let bad: Vec<Message> = vec![
        Message::Certificates { chains: vec![vec![0xff; 300]] },
        Message::Certificates { chains: vec![foreign] },
        Message::Certificates { chains: vec![own; MAX_CHAINS_PER_MESSAGE + 1] },
    ];
    let mut attacked = Vec::new();
    for (i, msg) in bad.into_iter().enumerate() {
        let w = m.link(2 + i, b);
        m.settle();
        assert!(!m.engines[b].is_closed(w.3), "attacker {i} is enrolled: its link comes up");
        m.engines[2 + i].send_raw(w.1, &msg.encode()).unwrap();
        attacked.push(w);
    }
    m.settle();
    for (i, w) in attacked.iter().enumerate() {
        assert!(m.engines[b].is_closed(w.3), "attack {i}: b kept the link");
    }
    // The honest link is up and still carries changes.
    let honest = m.wires[0];
    assert!(!m.engines[b].is_closed(honest.3));
    m.stores[a].upsert("tasks", json!({"_id": "after"})).unwrap();
    m.settle();
    assert!(m.doc(b, "after").is_some());
}
