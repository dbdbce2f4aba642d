//! The cloud's PostgreSQL schema, as versioned, forward-only migrations.
//!
//! Every relay runs [`migrate`] when it starts. The migrations run in one transaction under a transaction-level
//! advisory lock, so relays starting at once apply each migration exactly once (the others wait, then find it
//! applied); a database at a version newer than this relay knows is refused, so an old relay never writes into a
//! schema it does not understand.

use crate::CloudError;

/// The schema version this relay writes (the number of migrations below).
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// The advisory lock key under which migrations run ("shoal" in ASCII).
const MIGRATION_LOCK: i64 = 0x73686f616c;

/// The migrations, in order: migration `n` (1-based) moves the schema from version `n - 1` to `n`. Never edit one
/// that has shipped; add another.
const MIGRATIONS: &[&str] = &[
    // 1: the change log, the merged documents, changes waiting for their dependencies, equivocation evidence,
    // attachments, certificates and device settings.
    r#"
    -- Every change held, as received (the bytes its author signed). `seq` orders the log (causal within a document:
    -- a change is logged after every change it depends on) and is the cursor other relays follow.
    CREATE TABLE changes (
        seq        bigserial PRIMARY KEY,
        author     bigint NOT NULL,
        start_ctr  bigint NOT NULL,
        end_ctr    bigint NOT NULL,
        doc        bigint NOT NULL,
        hash       bytea  NOT NULL,
        body       bytea  NOT NULL,
        sig        bytea,
        UNIQUE (author, start_ctr)
    );
    CREATE INDEX changes_by_doc ON changes (doc, seq);

    -- What is held of each author: its counter ranges (a postcard-encoded range set), one row per author.
    CREATE TABLE held (
        author bigint PRIMARY KEY,
        ranges bytea  NOT NULL
    );

    -- Each document's merged state (the CRDT, encoded exactly as a phone encodes it) and its JSON view (for
    -- queries in SQL; a string holding U+0000, which JSONB cannot, holds U+FFFD there instead). `num` is the
    -- document's number in this database, which the change log refers to.
    CREATE TABLE docs (
        num        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        collection text   NOT NULL,
        doc_id     text   NOT NULL,
        state      bytea  NOT NULL,
        view       jsonb,
        UNIQUE (collection, doc_id)
    );
    CREATE INDEX docs_view ON docs USING GIN (view jsonb_path_ops);

    -- Changes whose dependencies have not arrived.
    CREATE TABLE pending (
        author     bigint NOT NULL,
        start_ctr  bigint NOT NULL,
        collection text   NOT NULL,
        doc_id     text   NOT NULL,
        body       bytea  NOT NULL,
        sig        bytea,
        received   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (author, start_ctr)
    );
    CREATE INDEX pending_by_doc ON pending (collection, doc_id);
    CREATE INDEX pending_by_age ON pending (received);

    -- Proof that an author made two different changes at one counter: both, with their signatures.
    CREATE TABLE equivocations (
        author      bigint NOT NULL,
        counter     bigint NOT NULL,
        held        bytea  NOT NULL,
        held_sig    bytea,
        refused     bytea  NOT NULL,
        refused_sig bytea,
        noticed     timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (author, counter)
    );

    -- Attachments: whole ones in chunks, and parts received while a fetch is under way.
    CREATE TABLE attachments (
        hash bytea  PRIMARY KEY,
        len  bigint NOT NULL
    );
    CREATE TABLE attachment_chunks (
        hash bytea  NOT NULL,
        idx  bigint NOT NULL,
        data bytea  NOT NULL,
        PRIMARY KEY (hash, idx)
    );
    CREATE TABLE attachment_parts (
        hash   bytea  NOT NULL,
        offset_bytes bigint NOT NULL,
        data   bytea  NOT NULL,
        PRIMARY KEY (hash, offset_bytes)
    );

    -- Certificate chains of signing devices, and the revocation lists held (one per issuer).
    CREATE TABLE certificates (
        device bigint PRIMARY KEY,
        chain  bytea  NOT NULL
    );
    CREATE TABLE revocation_lists (
        idx  int   PRIMARY KEY,
        list bytea NOT NULL
    );
    "#,
    // 2: which documents name each attachment (now or before: their readers received the token), so that serving
    // an attachment is checked against the documents that hold it with an index lookup.
    r#"
    CREATE TABLE attachment_refs (
        hash bytea  NOT NULL,
        doc  bigint NOT NULL,
        PRIMARY KEY (hash, doc)
    );
    "#,
    // 3: the back office's change feed and the cloud's own writes. Each change row records the transaction that
    // wrote it: rows of transactions older than every transaction still running are final (none can appear before
    // them any more), so a feed reader that reads only those, in (transaction, seq) order, never skips a change
    // committed late. Each relay run writes under an author id of its own: `writers` hands out the chains of a
    // device key (the relay's, in certificate mode) so that relays sharing one key never reuse one.
    r#"
    ALTER TABLE changes ADD COLUMN xact xid8 NOT NULL DEFAULT pg_current_xact_id();
    CREATE INDEX changes_feed ON changes (xact, seq);
    -- Documents in id order by code point (as phones order ids), for the back office's pages.
    CREATE INDEX docs_by_id ON docs (collection, doc_id COLLATE "C");
    CREATE TABLE writers (
        device     bigint PRIMARY KEY,
        next_chain bigint NOT NULL
    );
    "#,
    // 4: the changes kept aside, counted (in all and per author) as they are added and taken, so that the quotas
    // are checked with an index lookup: counting the rows (up to 100,000) for every change kept aside let a device
    // that fills the table make each further change cost the database a scan. Every statement that adds or takes
    // one first locks the total's row, so they are serialised (they are rare: changes that arrive before their
    // dependencies) and the counts are exact.
    r#"
    CREATE TABLE pending_total (
        one boolean PRIMARY KEY DEFAULT true CHECK (one),
        n   bigint  NOT NULL
    );
    INSERT INTO pending_total (n) SELECT count(*) FROM pending;
    CREATE TABLE pending_authors (
        author bigint PRIMARY KEY,
        n      bigint NOT NULL
    );
    INSERT INTO pending_authors (author, n) SELECT author, count(*) FROM pending GROUP BY author;
    CREATE INDEX pending_authors_largest ON pending_authors (n DESC, author);
    "#,
    // 5: documents' states merged from devices that folded changes into their snapshots (issue 17). The changes a
    // state brought are held (in `held`, as changes are) but have no log row: `folded` records them per document
    // (a dense summary, as phones record theirs), so that a device lacking them is sent the document's state;
    // `folded_held` per author (a range set, as `held`), so that such a change received again is known for a
    // duplicate and the summary knows which ranges have no rows; `merged` journals each merge per document and
    // author, numbered from the change log's own sequence and with its transaction, so that the other relays
    // bring their summaries up to date and the feed delivers it between the changes, exactly once.
    r#"
    CREATE TABLE folded (
        doc     bigint PRIMARY KEY,
        summary bytea  NOT NULL
    );
    CREATE TABLE folded_held (
        author bigint PRIMARY KEY,
        ranges bytea  NOT NULL
    );
    CREATE TABLE merged (
        seq    bigint PRIMARY KEY DEFAULT nextval('changes_seq_seq'),
        xact   xid8   NOT NULL DEFAULT pg_current_xact_id(),
        doc    bigint NOT NULL,
        author bigint NOT NULL,
        ranges bytea  NOT NULL
    );
    CREATE INDEX merged_feed ON merged (xact, seq);
    "#,
    // 6: the cloud's own compaction (issue 17). `device_acks` keeps what each device said it holds (its summaries,
    // as phones keep theirs in `peer_acks`), with when it was last heard from: the fleet's frontier is what every
    // device heard from within the horizon holds. Change rows record when they were received (rows older than this
    // migration take its time), so that the feed keeps every change for its retention. Changes folded away are
    // journalled in `merged` with `compacted` (the other relays' summaries learn that they have no row; the feed
    // does not deliver them again), and `feed_floor` is the newest row folded away: a feed cursor before it may
    // have missed changes, and is refused.
    r#"
    CREATE TABLE device_acks (
        device  bytea       PRIMARY KEY,
        summary bytea       NOT NULL,
        heard   timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX device_acks_by_heard ON device_acks (heard);
    ALTER TABLE changes ADD COLUMN received timestamptz NOT NULL DEFAULT now();
    ALTER TABLE merged ADD COLUMN compacted boolean NOT NULL DEFAULT false;
    CREATE TABLE feed_floor (
        one  boolean PRIMARY KEY DEFAULT true CHECK (one),
        xact xid8    NOT NULL,
        seq  bigint  NOT NULL
    );
    "#,
    // 7: attested states (issue 17, certificate mode: see `shoaldb::security::attestation`), one per document: the
    // last one an attester signed that the cloud took (signed by the relay itself, with an `attest` grant, or
    // received from a device and checked), with the changes it holds (a dense summary) — the cloud folds a signed
    // change only under one, and sends it to a device lacking folded changes. `seq` numbers them in the order they
    // were kept (every relay writes them under one advisory lock, so the numbers follow the commits), for the links
    // that send each new one on. `attested_spans` keeps, per author of a state, the span of counters it holds, so
    // that the states holding some changes a device asks about are found with an index range scan.
    r#"
    CREATE TABLE attested (
        doc       bigint PRIMARY KEY,
        seq       bigint NOT NULL UNIQUE,
        state     bytea  NOT NULL,
        changes   bytea  NOT NULL,
        attester  bigint NOT NULL,
        signature bytea  NOT NULL
    );
    CREATE TABLE attested_spans (
        author bigint NOT NULL,
        doc    bigint NOT NULL,
        lo     bigint NOT NULL,
        hi     bigint NOT NULL,
        PRIMARY KEY (author, doc)
    );
    CREATE INDEX attested_spans_by_hi ON attested_spans (author, hi);
    "#,
    // 8: a document's first copy arrives whole (issue 17): its version vector (postcard), sent with its first
    // change (`shoaldb::sync::first_copy`); written with its state, NULL for documents not written since (each
    // compaction fills some in: `docs_unversioned`).
    r#"
    ALTER TABLE docs ADD COLUMN version bytea;
    CREATE INDEX docs_unversioned ON docs (num) WHERE version IS NULL;
    "#,
    // 9: what each device acknowledged, day by day (issue 17): `device_acks` as it stood at the end of each day (UTC)
    // the device was heard from, so that a roster's frontier takes each member's acknowledgements from before the
    // roster's time (`PgReplica::roster_frontier`). Kept for twice the horizon, and each device's newest row
    // older than that. And the frontiers signed (`PgReplica::sign_frontier`).
    r#"
    CREATE TABLE device_ack_days (
        device  bytea       NOT NULL,
        day     timestamptz NOT NULL,
        summary bytea       NOT NULL,
        PRIMARY KEY (device, day)
    );
    INSERT INTO device_ack_days (device, day, summary)
        SELECT device, date_trunc('day', heard, 'UTC'), summary FROM device_acks;
    -- The stable frontiers this cloud signed, one per roster (by its time): a `StableFrontier` (postcard).
    CREATE TABLE frontiers (
        until_ms bigint PRIMARY KEY,
        frontier bytea  NOT NULL
    );
    -- The signing keys of the relays that serve this database (certificate mode): roster members whose holdings
    -- are the cloud's own.
    CREATE TABLE relay_keys (signing_key bytea PRIMARY KEY);
    "#,
];

/// Bring the database to [`SCHEMA_VERSION`]: apply the migrations it lacks, in one transaction, under an advisory
/// lock (several relays may start at once). Returns the version found before.
///
/// # Errors
/// [`CloudError::SchemaTooNew`] when the database is at a version this relay does not know (a newer relay
/// migrated it); [`CloudError::Postgres`] when PostgreSQL fails (nothing is changed).
pub fn migrate(client: &mut postgres::Client) -> Result<i32, CloudError> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS shoal_schema (
             version    int PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )?;
    let found: i32 = tx.query_one("SELECT coalesce(max(version), 0) FROM shoal_schema", &[])?.get(0);
    if found > SCHEMA_VERSION {
        return Err(CloudError::SchemaTooNew { found, known: SCHEMA_VERSION });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let version = i as i32 + 1;
        log::info!("migrating the cloud schema to version {version}");
        tx.batch_execute(sql)?;
        tx.execute("INSERT INTO shoal_schema (version) VALUES ($1)", &[&version])?;
    }
    tx.commit()?;
    Ok(found)
}
