//! Engines whose received changes are applied apart ([`Engine::on_frame_deferring`]) end exactly as engines that
//! apply them in place, and [`Engine::take_wakes`] reports the links that have something to send.

use super::engine::{AppliedJob, Engine, EngineEvent, LinkId};
use super::wire::{Subscription, TransportKind};
use crate::security::{AppSecret, Identity};
use crate::store::Replica;
use crate::Store;
use serde_json::json;

fn engine(store: &Store, name: &str, subscriptions: Vec<Subscription>) -> Engine {
    let secret = AppSecret::from_bytes(b"deferred apply").unwrap_or_else(|e| panic!("{e}"));
    let identity = Identity::generate().unwrap_or_else(|e| panic!("{e}"));
    Engine::new(store.replica(), identity, secret, name, subscriptions, 0)
}

/// Move frames both ways until nothing moves. `b` applies apart: a batch waits `hold` rounds before it is run and
/// finished, while frames keep arriving behind it.
fn settle(a: &mut Engine, la: LinkId, b: &mut Engine, lb: LinkId, hold: usize) {
    settle_checking(a, la, b, lb, hold, &|| {});
}

/// [`settle`], calling `check` after each batch `b` finished applying.
fn settle_checking(a: &mut Engine, la: LinkId, b: &mut Engine, lb: LinkId, hold: usize, check: &dyn Fn()) {
    let mut waiting: Option<(usize, AppliedJob)> = None;
    for _ in 0..100_000 {
        let mut moved = false;
        while let Some(f) = a.poll_frame(la) {
            b.on_frame_deferring(lb, &f);
            moved = true;
        }
        while let Some(f) = b.poll_frame(lb) {
            a.on_frame(la, &f);
            moved = true;
        }
        waiting = match waiting.take() {
            Some((0, done)) => {
                b.finish_apply(done);
                check();
                moved = true;
                None
            }
            Some((n, done)) => Some((n - 1, done)),
            None => b.take_apply(lb).map(|job| (hold, job.run())),
        };
        if !moved && waiting.is_none() && b.take_apply(lb).is_none() {
            return;
        }
    }
    panic!("the engines did not settle");
}

#[test]
fn changes_applied_apart_converge_as_changes_applied_in_place() {
    for hold in [0, 3] {
        let (sa, sb) = (Store::open(":memory:").unwrap(), Store::open(":memory:").unwrap());
        for i in 0..300 {
            sa.upsert("tasks", json!({"_id": format!("t{i}"), "n": i, "text": "x".repeat(300)})).unwrap();
        }
        sb.upsert("notes", json!({"_id": "n", "text": "from b"})).unwrap();
        let everything = vec![Subscription::everything()];
        let (mut a, mut b) = (engine(&sa, "a", everything.clone()), engine(&sb, "b", everything));
        let la = a.add_link(TransportKind::Lan, true).unwrap();
        let lb = b.add_link(TransportKind::Lan, false).unwrap();
        settle(&mut a, la, &mut b, lb, hold);
        assert_eq!(sa.replica().summary().unwrap(), sb.replica().summary().unwrap());
        assert_eq!(sb.get("tasks", "t299").unwrap().unwrap()["n"], 299);
        assert_eq!(sa.get("notes", "n").unwrap().unwrap()["text"], "from b");
        let applied: usize = std::iter::from_fn(|| b.poll_event())
            .filter_map(|e| match e {
                EngineEvent::Applied { applied, .. } => Some(applied),
                _ => None,
            })
            .sum();
        assert_eq!(applied, 300);
        // Live: a later write goes the same way.
        sa.update("tasks", "t0", |d| Ok(d.set("n", 1000)?)).unwrap();
        settle(&mut a, la, &mut b, lb, hold);
        assert_eq!(sb.get("tasks", "t0").unwrap().unwrap()["n"], 1000);
        assert!(!a.is_closed(la) && !b.is_closed(lb));
    }
}

#[test]
fn a_first_copy_applied_apart_arrives_whole() {
    let (sa, sb) = (Store::open(":memory:").unwrap(), Store::open(":memory:").unwrap());
    for i in 0..200 {
        sa.upsert("docs", json!({"_id": "big", format!("f{i}"): "x".repeat(500)})).unwrap();
        sa.upsert("docs", json!({"_id": format!("small{i}")})).unwrap();
    }
    let whole = sa.get("docs", "big").unwrap();
    let everything = vec![Subscription::everything()];
    let (mut a, mut b) = (engine(&sa, "a", everything.clone()), engine(&sb, "b", everything));
    let la = a.add_link(TransportKind::Lan, true).unwrap();
    let lb = b.add_link(TransportKind::Lan, false).unwrap();
    let batches = std::cell::Cell::new(0);
    settle_checking(&mut a, la, &mut b, lb, 2, &|| {
        batches.set(batches.get() + 1);
        let seen = sb.get("docs", "big").unwrap();
        assert!(seen.is_none() || seen == whole, "the first copy is seen in part");
    });
    assert!(batches.get() > 2, "the document went over in {} batches", batches.get());
    assert_eq!(sb.get("docs", "big").unwrap(), whole);
    assert_eq!(sa.replica().summary().unwrap(), sb.replica().summary().unwrap());
}

#[test]
fn wakes_report_links_with_something_to_send_once_until_polled() {
    let (sa, sb) = (Store::open(":memory:").unwrap(), Store::open(":memory:").unwrap());
    let (mut a, mut b) = (engine(&sa, "a", vec![Subscription::everything()]), engine(&sb, "b", Vec::new()));
    let la = a.add_link(TransportKind::Lan, true).unwrap();
    let lb = b.add_link(TransportKind::Lan, false).unwrap();
    // The dialler's handshake is ready at once; reported once, not again before the link is polled.
    assert_eq!(a.take_wakes(), vec![la]);
    assert!(a.take_wakes().is_empty());
    settle(&mut a, la, &mut b, lb, 0);
    // Synced and quiet: nothing to report.
    let _ = (a.take_wakes(), b.take_wakes());
    while a.poll_frame(la).is_some() {}
    while b.poll_frame(lb).is_some() {}
    assert!(a.take_wakes().is_empty() && b.take_wakes().is_empty());
    // `a` wants everything from `b`, `b` nothing from `a`: once told its store changed, `b` reports its link (it
    // may have changes to send); `a` does not.
    sa.upsert("tasks", json!({"_id": "t", "n": 1})).unwrap();
    a.note_store_changed();
    assert!(a.take_wakes().is_empty());
    sb.upsert("tasks", json!({"_id": "u", "n": 1})).unwrap();
    b.note_store_changed();
    assert_eq!(b.take_wakes(), vec![lb]);
    settle(&mut a, la, &mut b, lb, 0);
    assert_eq!(sa.get("tasks", "u").unwrap().unwrap()["n"], 1);
    assert!(sb.get("tasks", "t").unwrap().is_none());
}
