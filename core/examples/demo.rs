//! A small, self-contained demo: three devices (three stores, each its own SQLite file) edit one shopping list
//! while apart — concurrently, every field type — then exchange their changes and converge.
//!
//! Run it with `cargo run -p shoaldb --example demo`. (Sync over the network, with discovery and encryption, is
//! the job of the sync layer; here the devices hand each other their changes directly.)

use serde_json::json;
use shoaldb::store::Replica;
use shoaldb::{Store, Value};

fn show(name: &str, store: &Store) {
    let doc = store.get("lists", "groceries").unwrap();
    println!("  {name:<7} {}", doc.map(|d| d.to_string()).unwrap_or_else(|| "(nothing yet)".into()));
}

/// One sync round from `a` to `b`: `b` sends a summary of what it has, `a` answers with what `b` lacks.
fn sync(from: (&str, &Store), to: (&str, &Store)) {
    let summary = to.1.replica().summary().unwrap();
    let changes = from.1.replica().changes_since(&summary).unwrap();
    let bytes: usize = changes.iter().map(|c| c.encode().len()).sum();
    let report = to.1.replica().apply_changes(&changes).unwrap();
    println!(
        "  {} -> {}: summary {} B, {} changes ({} B), applied {}",
        from.0,
        to.0,
        summary.encode().len(),
        changes.len(),
        bytes,
        report.applied
    );
}

fn main() -> shoaldb::Result<()> {
    let dir = tempfile::tempdir()?;
    let open = |n: &str| Store::open(dir.path().join(format!("{n}.db")));
    let (alice, bob, carol) = (open("alice")?, open("bob")?, open("carol")?);

    println!("1. Alice creates a shopping list and shares it with Bob and Carol.");
    alice.upsert_value(
        "lists",
        Some("groceries"),
        Value::Map(
            [
                ("title".to_string(), Value::from("Groceries")),
                ("items".to_string(), Value::Array(vec![Value::from("milk"), Value::from("bread")])),
                ("notes".to_string(), Value::Text("buy before 6".into())),
                ("visits".to_string(), Value::Counter(1)),
            ]
            .into(),
        ),
    )?;
    sync(("alice", &alice), ("bob", &bob));
    sync(("alice", &alice), ("carol", &carol));

    println!("\n2. Offline, each edits the same list at the same time:");
    alice.update("lists", "groceries", |d| {
        d.set("title", "Groceries for Saturday")?;
        d.array_push("items", &["eggs".into()])?;
        d.increment("visits", 1)?;
        Ok(())
    })?;
    bob.update("lists", "groceries", |d| {
        d.set("title", "Weekend groceries")?;
        d.array_insert("items", 0, &["apples".into()])?;
        d.text_insert("notes", 12, " (Bob)")?;
        d.increment("visits", 1)?;
        Ok(())
    })?;
    carol.update("lists", "groceries", |d| {
        d.array_delete("items", 1, 1)?; // bread
        d.text_insert("notes", 0, "Please ")?;
        d.set("store.name", "Corner shop")?;
        d.increment("visits", 1)?;
        Ok(())
    })?;
    for (n, s) in [("alice", &alice), ("bob", &bob), ("carol", &carol)] {
        show(n, s);
    }

    println!("\n3. They meet and sync (Alice <-> Bob, then Bob <-> Carol: Alice and Carol never meet):");
    sync(("alice", &alice), ("bob", &bob));
    sync(("bob", &bob), ("alice", &alice));
    sync(("bob", &bob), ("carol", &carol));
    sync(("carol", &carol), ("bob", &bob));
    sync(("bob", &bob), ("alice", &alice));

    println!("\n4. Everyone now holds the same list:");
    for (n, s) in [("alice", &alice), ("bob", &bob), ("carol", &carol)] {
        show(n, s);
    }
    let views: Vec<_> = [&alice, &bob, &carol].iter().map(|s| s.get("lists", "groceries").unwrap()).collect();
    let converged = views.windows(2).all(|w| w[0] == w[1]);
    let doc = bob.document("lists", "groceries")?.expect("synced");
    println!("\n  converged: {converged}");
    println!("  title conflict kept for apps that want it: {}", json!(doc.conflicts("title")?));
    println!("  visits = 1 + 3 concurrent increments = {}", doc.get("visits")?.unwrap_or_default());
    if !converged {
        std::process::exit(1);
    }
    Ok(())
}
