//! The SQLite schema and its forward migrations. The schema version is SQLite's `user_version`; each migration
//! moves it up by one inside one transaction, so a crash mid-migration leaves the previous version intact.

use rusqlite::Connection;

/// Migrations, in order: `MIGRATIONS[i]` moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: documents (JSON view, snapshot), the change log (for replication, and the changes after each document's
    //    snapshot), pending changes, evicted documents, metadata, attachment chunks.
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE docs (
        doc        INTEGER PRIMARY KEY,          -- local number, referenced by changes and snapshots
        collection TEXT NOT NULL,
        id         TEXT NOT NULL,
        view       TEXT,                         -- JSON rendering, NULL when the document does not exist
        snap_seq   INTEGER NOT NULL DEFAULT 0,   -- the snapshot holds this document's changes up to this seq
        UNIQUE (collection, id)
    );
    CREATE TABLE snapshots (
        doc   INTEGER PRIMARY KEY,               -- docs.doc
        state BLOB NOT NULL                      -- full CRDT state up to docs.snap_seq
    );
    CREATE TABLE changes (
        seq   INTEGER PRIMARY KEY,               -- local application order (causal per document)
        peer  INTEGER NOT NULL,
        start INTEGER NOT NULL,
        end   INTEGER NOT NULL,
        doc   INTEGER NOT NULL,                  -- docs.doc
        body  BLOB NOT NULL,
        UNIQUE (peer, start)
    );
    CREATE INDEX changes_by_doc ON changes (doc, seq);
    CREATE TABLE pending (
        peer       INTEGER NOT NULL,
        start      INTEGER NOT NULL,
        collection TEXT NOT NULL,
        doc        TEXT NOT NULL,
        body       BLOB NOT NULL,
        received   INTEGER NOT NULL,
        PRIMARY KEY (peer, start)
    );
    CREATE INDEX pending_by_doc ON pending (collection, doc);
    CREATE TABLE evicted (collection TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (collection, id)) WITHOUT ROWID;
    CREATE TABLE blobs (
        hash       BLOB PRIMARY KEY,
        len        INTEGER NOT NULL,
        chunk_size INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE blob_chunks (
        hash BLOB NOT NULL,
        idx  INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (hash, idx)
    ) WITHOUT ROWID;
    "#,
    // 2: attachment bytes being fetched from another device, kept across broken links so a fetch resumes.
    r#"
    CREATE TABLE partial_blobs (
        hash   BLOB NOT NULL,
        offset INTEGER NOT NULL,
        data   BLOB NOT NULL,
        UNIQUE (hash, offset)
    );
    "#,
    // 3: large register values kept beside a document's view rather than inside it, so that a small edit of a
    //    document holding large values does not rewrite them. The view holds `null` where such a value sits;
    //    `docs.parts` counts them (0: the view is whole). A value is named by the register entry (dot) that holds
    //    it, which never changes; only its location in the view may move (array elements inserted before it).
    r#"
    ALTER TABLE docs ADD COLUMN parts INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE view_parts (
        doc      INTEGER NOT NULL,               -- docs.doc
        peer     INTEGER NOT NULL,               -- the register entry's dot
        counter  INTEGER NOT NULL,
        location TEXT NOT NULL,                  -- JSON array of the keys and indexes leading to it in the view
        json     TEXT NOT NULL,                  -- the value's JSON
        PRIMARY KEY (doc, peer, counter)
    );
    "#,
    // 4: documents whose changes by this store's author were evicted. The author's changes to one document form a
    //    chain (each follows the one before); a write to such a document before those changes are back would break
    //    the chain, so the store then continues under a new author id (see `Store::evict`).
    r#"
    CREATE TABLE forgotten (
        collection TEXT NOT NULL,
        id         TEXT NOT NULL,
        author     INTEGER NOT NULL,             -- the author whose changes were dropped
        end        INTEGER NOT NULL,             -- the last counter of them
        PRIMARY KEY (collection, id)
    ) WITHOUT ROWID;
    "#,
    // 5: hostile authors. `changes.hash`: 16 bytes of BLAKE3 of the change's `DocChange` encoding, to tell two
    //    different changes for one (author, counter) apart (NULL in rows written before; filled in at open).
    //    `equivocations`: such pairs seen here, with both versions as evidence. `pending_by_received`: expiry of
    //    pending changes, oldest first. `changes_by_author`: an author's (start, end, hash) read from the index
    //    alone (the hash column comes after the body, which may span overflow pages).
    r#"
    ALTER TABLE changes ADD COLUMN hash BLOB;
    CREATE TABLE equivocations (
        peer     INTEGER NOT NULL,             -- the author
        start    INTEGER NOT NULL,             -- the first counter of the refused version
        held     BLOB NOT NULL,                -- the version this store holds (DocChange encoding)
        refused  BLOB NOT NULL,                -- the conflicting version it refused (DocChange encoding)
        detected INTEGER NOT NULL,             -- when (ms since the epoch)
        PRIMARY KEY (peer, start)
    );
    CREATE INDEX pending_by_received ON pending (received);
    CREATE INDEX changes_by_author ON changes (peer, start, end, hash);
    "#,
    // 6: signed changes (issue 14). `sig`: the author's `ChangeSignature` (postcard), NULL for a change of an author
    //    that was not enrolled; forwarded with the change. `certificates`: the certificate chains of the devices
    //    whose signed changes this store holds, checked when received, kept so they hold across restarts and can be
    //    passed on with the changes. The equivocation evidence gains both versions' signatures.
    r#"
    ALTER TABLE changes ADD COLUMN sig BLOB;
    ALTER TABLE pending ADD COLUMN sig BLOB;
    ALTER TABLE equivocations ADD COLUMN held_sig BLOB;
    ALTER TABLE equivocations ADD COLUMN refused_sig BLOB;
    CREATE TABLE certificates (
        device INTEGER PRIMARY KEY,            -- the device id (author 0 of its signing key)
        chain  BLOB NOT NULL                   -- its encoded certificate chain
    );
    "#,
    // 7: which documents refer to which attachment, so that the read check on attachment bytes looks up the few
    //    documents naming a hash instead of scanning every view. Added to as views are written (a document that
    //    once named a hash keeps its row: its readers received that change anyway); filled here from the views
    //    and large values already stored.
    r#"
    CREATE TABLE attachment_refs (
        hash BLOB NOT NULL,                    -- the attachment's BLAKE3 hash
        doc  INTEGER NOT NULL,                 -- docs.doc of a document whose view named it
        PRIMARY KEY (hash, doc)
    ) WITHOUT ROWID;
    CREATE INDEX attachment_refs_by_doc ON attachment_refs (doc);
    WITH named AS MATERIALIZED (
        SELECT doc, view AS json FROM docs
        WHERE view IS NOT NULL AND instr(view, '"_attachment":"') > 0 AND json_valid(view)
        UNION ALL
        SELECT doc, json FROM view_parts WHERE instr(json, '"_attachment":"') > 0 AND json_valid(json)
    )
    INSERT OR IGNORE INTO attachment_refs (hash, doc)
        SELECT unhex(t.atom), named.doc FROM named, json_tree(named.json) AS t
        WHERE t.key = '_attachment' AND t.type = 'text' AND length(t.atom) = 64 AND unhex(t.atom) IS NOT NULL;
    "#,
    // 8: indexes an app declares on fields of a collection (`Store::create_index`): each is an SQLite index on the
    //    documents' views, named here with the paths it covers. `docs_with_parts`: the few documents whose views
    //    hold large values beside them, which queries evaluate apart (SQL sees `null` where such a value sits).
    r#"
    CREATE TABLE indexes (
        name       TEXT PRIMARY KEY,           -- the SQLite index's name
        collection TEXT NOT NULL,
        paths      TEXT NOT NULL               -- JSON array of the paths' texts, most significant first
    ) WITHOUT ROWID;
    CREATE INDEX docs_with_parts ON docs (collection) WHERE parts > 0;
    "#,
    // 9: garbage collection's marks (`Store::collect_garbage`): what a collection found unneeded, and since when;
    //    what stays so for the policy's period is deleted by a later collection.
    r#"
    CREATE TABLE gc_marks (
        kind  INTEGER NOT NULL,                -- 0: an attachment no document names; 1: a download making no progress
        hash  BLOB NOT NULL,                   -- the attachment's hash
        since INTEGER NOT NULL,                -- when a collection first saw it so (ms since the epoch)
        seen  INTEGER NOT NULL,                -- kind 1: the bytes received by then
        PRIMARY KEY (kind, hash)
    ) WITHOUT ROWID;
    "#,
    // 10: log compaction (`Store::compact`). `docs.folded`: the changes of a document that were folded into its
    //    snapshot and dropped from the log, exactly (an encoded `Summary`: author → counter ranges), NULL when none
    //    were. The store still holds them (its summary says so); a device lacking some of them gets the
    //    document's state instead of its changes.
    r#"
    ALTER TABLE docs ADD COLUMN folded BLOB;
    CREATE INDEX docs_folded ON docs (doc) WHERE folded IS NOT NULL;
    "#,
    // 11: deferred views. `docs.stale` is 1 while the document's stored view (and the large values and attachment
    //    references beside it) lags behind its CRDT state: a large document edited often has its view rewritten
    //    once its changes add up to a few times the view's size (`docs::VIEW_DEBT_RATIO`), not at every commit.
    //    Every read of views first renders the stale ones (`Inner::flush_views`); the index finds them.
    r#"
    ALTER TABLE docs ADD COLUMN stale INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX docs_stale ON docs (collection) WHERE stale = 1;
    "#,
    // 12: what other devices acknowledged (`compaction::keep_peer_summary`): per device, the changes of this store
    //    it said it holds, and when it last said so. Compaction folds what every device heard from within its
    //    horizon holds, and never what a cloud peer lacks. The cloud's acknowledgements kept in `meta` until now
    //    move here (the time: now, the later the more is kept).
    r#"
    CREATE TABLE peer_acks (
        device  BLOB PRIMARY KEY,              -- the device's key (empty: the cloud's, from before this table)
        summary BLOB NOT NULL,                 -- a dense `Summary`: the changes of this store it holds
        heard   INTEGER NOT NULL,              -- when it last said so (ms since the epoch)
        cloud   INTEGER NOT NULL               -- 1: a cloud peer (kept complete change by change)
    ) WITHOUT ROWID;
    INSERT INTO peer_acks (device, summary, heard, cloud)
        SELECT x'', value, CAST(strftime('%s', 'now') AS INTEGER) * 1000, 1 FROM meta WHERE key = 'cloud_acked';
    DELETE FROM meta WHERE key IN ('cloud_acked', 'cloud_acked_at');
    "#,
    // 13: expiry (`Store::expire`) and the storage budget (`Store::fit_budget`). `docs.used` / `blobs.used`: when
    //    this device last read the document or attachment (written down by `fit_budget`) or stored the attachment,
    //    ms; eviction goes least recently used first.
    //    Expiry: `docs.modified`: when the latest change applied to the document was made (its
    //    hybrid-logical-clock time, ms); NULL until one is (a document from before this column, or from a merged
    //    state), and then stamped by the first expiry that meets it. `expiry`: the collections whose documents are
    //    removed once not modified for their time to live.
    r#"
    ALTER TABLE docs ADD COLUMN modified INTEGER;
    ALTER TABLE docs ADD COLUMN used INTEGER;
    ALTER TABLE blobs ADD COLUMN used INTEGER;
    CREATE TABLE expiry (
        collection TEXT PRIMARY KEY,
        ttl_ms     INTEGER NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 14: runs (`store::logrow`), and the log's columns reordered. A log row may hold consecutive unsigned changes
    //    of one author to one document, logged by one transaction, whose counters follow on: `body` their encodings
    //    one after the other, `hash` their hashes, `parts` (NULL for a row of one change) where each ends. The
    //    body, of any size, now comes last: everything else in a row is read from its first page, without walking
    //    the body's overflow pages. The index `changes_by_author` (which carried the hash for that reason) goes:
    //    the lookups by author and counter use `UNIQUE (peer, start)`.
    //    `snapshots.tombstones`: the deleted characters and array elements the snapshot keeps (for the storage
    //    statistics), NULL for a snapshot written before (counted from its state when asked).
    //    `folded` (from `docs.folded`): the record of a compacted document's folded changes in a table of its own.
    //    In the documents' rows, records of a few KB left about half of each page empty (one row per page).
    r#"
    CREATE TABLE changes_v14 (
        seq   INTEGER PRIMARY KEY,
        peer  INTEGER NOT NULL,
        start INTEGER NOT NULL,
        end   INTEGER NOT NULL,
        doc   INTEGER NOT NULL,
        hash  BLOB,
        parts BLOB,
        sig   BLOB,
        body  BLOB NOT NULL,
        UNIQUE (peer, start)
    );
    INSERT INTO changes_v14 (seq, peer, start, end, doc, hash, sig, body)
        SELECT seq, peer, start, end, doc, hash, sig, body FROM changes ORDER BY seq;
    DROP TABLE changes;
    ALTER TABLE changes_v14 RENAME TO changes;
    CREATE INDEX changes_by_doc ON changes (doc, seq);
    ALTER TABLE snapshots ADD COLUMN tombstones INTEGER;
    CREATE TABLE folded (
        doc     INTEGER PRIMARY KEY,           -- docs.doc
        summary BLOB NOT NULL                  -- a dense `Summary` of the changes folded into its snapshot
    );
    INSERT INTO folded (doc, summary) SELECT doc, folded FROM docs WHERE folded IS NOT NULL;
    DROP INDEX docs_folded;
    ALTER TABLE docs DROP COLUMN folded;
    "#,
    // 15: attested states (issue 17, certificate mode).
    r#"
    CREATE TABLE attested (
        doc       INTEGER PRIMARY KEY,         -- docs.doc
        seq       INTEGER NOT NULL,            -- when it was kept: one more than any kept before
        state     BLOB NOT NULL,               -- the state an attester signed (`Document::encode`)
        attester  INTEGER NOT NULL,            -- the attester's device id
        signature BLOB NOT NULL                -- its Ed25519 signature (`Attestation`)
    );
    CREATE INDEX attested_by_seq ON attested (seq);
    -- The changes an attested state holds, when they are not those of its document's record in `folded` (after a
    -- compaction they usually are: the record is then kept once).
    CREATE TABLE attested_changes (
        doc     INTEGER PRIMARY KEY,           -- docs.doc
        changes BLOB NOT NULL                  -- a dense `Summary`
    );
    "#,
    // 16: a document's first copy arrives whole (issue 17): its version vector (postcard), sent with its first
    //     change (`sync::first_copy`); written with each write of the document, NULL until then (`Store::compact`
    //     fills those in, found by `docs_unversioned`).
    r#"
    ALTER TABLE docs ADD COLUMN version BLOB;
    CREATE INDEX docs_unversioned ON docs (doc) WHERE version IS NULL;
    "#,
    // 17: what is known of the deletions of changes folded into a snapshot (issue 17, `store::unsettled`): which
    //     tombstones a stable frontier settles. Written once a frontier is kept; a document without a row has
    //     every folded change's deletions unknown.
    r#"
    CREATE TABLE unsettled (
        doc       INTEGER PRIMARY KEY,         -- docs.doc
        opaque    BLOB NOT NULL,               -- a dense `Summary`: changes folded or merged, deletions not recorded
        deletions BLOB NOT NULL                -- postcard: a `Deletions` per change folded that no frontier covered
    );
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The schema at [`SCHEMA_VERSION`], made at once for a new store: what [`MIGRATIONS`] make from nothing (the
/// test `a_new_store_has_the_schema_the_migrations_make` holds the two to the same tables, columns and indexes),
/// in a few statements instead of the migrations' table rebuilds and column changes, each of which makes SQLite
/// parse the whole schema again — most of the time a new store took to open. What each column means is said at the
/// migration that added it.
const SCHEMA: &str = r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
    CREATE TABLE docs (
        doc        INTEGER PRIMARY KEY,
        collection TEXT NOT NULL,
        id         TEXT NOT NULL,
        view       TEXT,
        snap_seq   INTEGER NOT NULL DEFAULT 0,
        parts      INTEGER NOT NULL DEFAULT 0,
        stale      INTEGER NOT NULL DEFAULT 0,
        modified   INTEGER,
        used       INTEGER,
        version    BLOB,
        UNIQUE (collection, id)
    );
    CREATE INDEX docs_with_parts ON docs (collection) WHERE parts > 0;
    CREATE INDEX docs_stale ON docs (collection) WHERE stale = 1;
    CREATE INDEX docs_unversioned ON docs (doc) WHERE version IS NULL;
    CREATE TABLE snapshots (doc INTEGER PRIMARY KEY, state BLOB NOT NULL, tombstones INTEGER);
    CREATE TABLE changes (
        seq   INTEGER PRIMARY KEY,
        peer  INTEGER NOT NULL,
        start INTEGER NOT NULL,
        end   INTEGER NOT NULL,
        doc   INTEGER NOT NULL,
        hash  BLOB,
        parts BLOB,
        sig   BLOB,
        body  BLOB NOT NULL,
        UNIQUE (peer, start)
    );
    CREATE INDEX changes_by_doc ON changes (doc, seq);
    CREATE TABLE folded (doc INTEGER PRIMARY KEY, summary BLOB NOT NULL);
    CREATE TABLE unsettled (doc INTEGER PRIMARY KEY, opaque BLOB NOT NULL, deletions BLOB NOT NULL);
    CREATE TABLE attested (
        doc       INTEGER PRIMARY KEY,
        seq       INTEGER NOT NULL,
        state     BLOB NOT NULL,
        attester  INTEGER NOT NULL,
        signature BLOB NOT NULL
    );
    CREATE INDEX attested_by_seq ON attested (seq);
    CREATE TABLE attested_changes (doc INTEGER PRIMARY KEY, changes BLOB NOT NULL);
    CREATE TABLE pending (
        peer       INTEGER NOT NULL,
        start      INTEGER NOT NULL,
        collection TEXT NOT NULL,
        doc        TEXT NOT NULL,
        body       BLOB NOT NULL,
        received   INTEGER NOT NULL,
        sig        BLOB,
        PRIMARY KEY (peer, start)
    );
    CREATE INDEX pending_by_doc ON pending (collection, doc);
    CREATE INDEX pending_by_received ON pending (received);
    CREATE TABLE evicted (collection TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (collection, id)) WITHOUT ROWID;
    CREATE TABLE forgotten (
        collection TEXT NOT NULL,
        id         TEXT NOT NULL,
        author     INTEGER NOT NULL,
        end        INTEGER NOT NULL,
        PRIMARY KEY (collection, id)
    ) WITHOUT ROWID;
    CREATE TABLE blobs (
        hash       BLOB PRIMARY KEY,
        len        INTEGER NOT NULL,
        chunk_size INTEGER NOT NULL,
        used       INTEGER
    ) WITHOUT ROWID;
    CREATE TABLE blob_chunks (
        hash BLOB NOT NULL,
        idx  INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (hash, idx)
    ) WITHOUT ROWID;
    CREATE TABLE partial_blobs (hash BLOB NOT NULL, offset INTEGER NOT NULL, data BLOB NOT NULL, UNIQUE (hash, offset));
    CREATE TABLE view_parts (
        doc      INTEGER NOT NULL,
        peer     INTEGER NOT NULL,
        counter  INTEGER NOT NULL,
        location TEXT NOT NULL,
        json     TEXT NOT NULL,
        PRIMARY KEY (doc, peer, counter)
    );
    CREATE TABLE equivocations (
        peer        INTEGER NOT NULL,
        start       INTEGER NOT NULL,
        held        BLOB NOT NULL,
        refused     BLOB NOT NULL,
        detected    INTEGER NOT NULL,
        held_sig    BLOB,
        refused_sig BLOB,
        PRIMARY KEY (peer, start)
    );
    CREATE TABLE certificates (device INTEGER PRIMARY KEY, chain BLOB NOT NULL);
    CREATE TABLE attachment_refs (hash BLOB NOT NULL, doc INTEGER NOT NULL, PRIMARY KEY (hash, doc)) WITHOUT ROWID;
    CREATE INDEX attachment_refs_by_doc ON attachment_refs (doc);
    CREATE TABLE indexes (name TEXT PRIMARY KEY, collection TEXT NOT NULL, paths TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE gc_marks (
        kind  INTEGER NOT NULL,
        hash  BLOB NOT NULL,
        since INTEGER NOT NULL,
        seen  INTEGER NOT NULL,
        PRIMARY KEY (kind, hash)
    ) WITHOUT ROWID;
    CREATE TABLE peer_acks (
        device  BLOB PRIMARY KEY,
        summary BLOB NOT NULL,
        heard   INTEGER NOT NULL,
        cloud   INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE expiry (collection TEXT PRIMARY KEY, ttl_ms INTEGER NOT NULL) WITHOUT ROWID;
"#;

/// Bring the database up to [`SCHEMA_VERSION`]. Fails on a database written by a newer build.
pub fn migrate(conn: &mut Connection) -> Result<(), crate::Error> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(crate::Error::UnsupportedSchema { found: current, supported: SCHEMA_VERSION });
    }
    if current == SCHEMA_VERSION {
        return Ok(());
    }
    // Every step in one transaction: a new store's schema is made with one commit (SQLite reloads the schema after
    // each commit that changed it), and a failed step leaves the file at the version it had.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    // Another process may have migrated meanwhile (then the transaction is dropped: it wrote nothing).
    let now: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if now > SCHEMA_VERSION {
        return Err(crate::Error::UnsupportedSchema { found: now, supported: SCHEMA_VERSION });
    }
    if now == SCHEMA_VERSION {
        return Ok(());
    }
    if now <= 0 {
        tx.execute_batch(SCHEMA)?;
    } else {
        for sql in MIGRATIONS.iter().skip(now as usize) {
            tx.execute_batch(sql)?;
        }
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    log::info!("store schema migrated from version {now} to {SCHEMA_VERSION}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::OptionalExtension;

    /// Everything about a schema that reads and writes depend on, table by table: each column (name, type, not
    /// null, default, primary key), whether the table has rowids, and its indexes (unique, partial, columns, and a
    /// partial index's condition).
    fn shape(conn: &Connection) -> Vec<String> {
        let strings = |sql: &str| -> Vec<String> {
            let mut stmt = conn.prepare(sql).unwrap();
            let n = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    (0..n)
                        .map(|i| r.get::<_, rusqlite::types::Value>(i).map(|v| format!("{v:?}")))
                        .collect::<rusqlite::Result<Vec<_>>>()
                        .map(|v| v.join("|"))
                })
                .unwrap();
            rows.collect::<rusqlite::Result<Vec<_>>>().unwrap()
        };
        let names = |sql: &str| -> Vec<String> {
            let mut stmt = conn.prepare(sql).unwrap();
            let rows = stmt.query_map([], |r| r.get(0)).unwrap();
            rows.collect::<rusqlite::Result<Vec<String>>>().unwrap()
        };
        let mut out = Vec::new();
        for table in names("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name") {
            out.push(format!("{table}: {:?}", strings(&format!("PRAGMA table_list('{table}')"))));
            for column in strings(&format!("PRAGMA table_xinfo('{table}')")) {
                out.push(format!("{table} column {column}"));
            }
            for index in names(&format!("SELECT name FROM pragma_index_list('{table}') ORDER BY name")) {
                let list = strings(&format!(
                    "SELECT \"unique\", origin, partial FROM pragma_index_list('{table}') WHERE name = '{index}'"
                ));
                let columns = strings(&format!("PRAGMA index_xinfo('{index}')"));
                // A partial index's condition, as written after WHERE (whitespace aside). A WITHOUT ROWID table's
                // key has no row here (the table is its index); an automatic index's has no SQL.
                let sql: Option<Option<String>> = conn
                    .query_row("SELECT sql FROM sqlite_schema WHERE name = ?1", [&index], |r| r.get(0))
                    .optional()
                    .unwrap();
                let condition = sql
                    .flatten()
                    .as_deref()
                    .and_then(|s| s.split(" WHERE ").nth(1))
                    .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "));
                // Automatic indexes are named by their order of creation; what they index names them here.
                let name = if index.starts_with("sqlite_autoindex_") { "(automatic)".to_string() } else { index };
                out.push(format!("{table} index {name}: {list:?} {columns:?} {condition:?}"));
            }
        }
        out
    }

    #[test]
    fn a_new_store_has_the_schema_the_migrations_make() {
        let mut fresh = Connection::open_in_memory().unwrap();
        migrate(&mut fresh).unwrap();
        let migrated = Connection::open_in_memory().unwrap();
        for sql in MIGRATIONS {
            migrated.execute_batch(sql).unwrap();
        }
        assert_eq!(shape(&fresh), shape(&migrated));
        let version: i64 = fresh.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn a_store_of_an_older_version_is_migrated_step_by_step() {
        // A store left at version 9 by an older build, with a document in it.
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..9] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 9).unwrap();
        conn.execute("INSERT INTO docs (collection, id, view) VALUES ('c', 'a', '{}')", []).unwrap();
        migrate(&mut conn).unwrap();
        let mut fresh = Connection::open_in_memory().unwrap();
        migrate(&mut fresh).unwrap();
        assert_eq!(shape(&conn), shape(&fresh));
        let id: String = conn.query_row("SELECT id FROM docs WHERE collection = 'c'", [], |r| r.get(0)).unwrap();
        assert_eq!(id, "a");
    }
}
