//! Indexes an app declares on fields of a collection: SQLite indexes on the documents' JSON views, which SQLite's
//! planner uses for the queries of [`super::find`] (equalities, ranges, sort and limit).
//!
//! An index on the paths `p1, p2, …` of collection `c` is an SQLite index on, for each path, the rank and value
//! columns of [`crate::query::sql`] (the very expressions the queries use, so that SQLite matches them), then the
//! document id, over the rows of `c` whose views are whole (`parts = 0`: the others are evaluated apart). It is
//! kept up to date by SQLite as documents are written, persists in the database file, and is local: indexes are
//! not replicated.

use rusqlite::{params, Connection, OptionalExtension};

use crate::query::sql::{json_path, rank_sql, sql_string, value_sql};
use crate::query::Path;
use crate::{Error, Result};

/// The most indexes one store keeps (each costs every write to its collection a little).
pub const MAX_INDEXES: usize = 64;

/// The most paths one index covers.
pub const MAX_INDEX_PATHS: usize = 8;

/// An index declared on a collection ([`crate::Store::create_index`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    /// The indexed collection.
    pub collection: String,
    /// The indexed fields, most significant first.
    pub paths: Vec<Path>,
    /// The SQLite index's name (as [`crate::Store::explain`] shows it).
    pub name: String,
}

/// The name of the index on `paths` of `collection`: the same for the same declaration, in every store.
fn index_name(collection: &str, paths: &[Path]) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(collection.as_bytes());
    for p in paths {
        hasher.update(&[0]);
        hasher.update(p.to_string().as_bytes());
    }
    let hash = hasher.finalize();
    let hex: String = hash.as_bytes()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("shoal_ix_{hex}")
}

/// The `WHERE` terms of every index and of the queries that may use one: the collection's documents that exist and
/// whose views are whole. (The collection is a literal, not a parameter: SQLite uses a partial index only for a
/// query whose terms imply the index's.)
pub(crate) fn rows_of(collection: &str) -> String {
    format!("collection = {} AND view IS NOT NULL AND parts = 0", sql_string(collection))
}

/// Declares the index on `paths` of `collection` (see [`crate::Store::create_index`]). Returns whether it is new.
pub(crate) fn create(conn: &Connection, collection: &str, paths: &[Path]) -> Result<bool> {
    if paths.is_empty() || paths.len() > MAX_INDEX_PATHS {
        return Err(Error::InvalidIndex(format!("an index covers 1 to {MAX_INDEX_PATHS} paths, not {}", paths.len())));
    }
    let mut columns = Vec::new();
    for p in paths {
        if p.is_root() {
            return Err(Error::InvalidIndex("the document itself is not a field".into()));
        }
        let path = json_path(p).ok_or_else(|| {
            Error::InvalidIndex(format!("the path {p} has a key holding '\"', '\\' or a control character"))
        })?;
        columns.push(rank_sql(&path));
        columns.push(value_sql(&path));
    }
    let name = index_name(collection, paths);
    let known: Option<String> =
        conn.query_row("SELECT name FROM indexes WHERE name = ?1", params![name], |r| r.get(0)).optional()?;
    if known.is_some() {
        return Ok(false);
    }
    let count: i64 = conn.query_row("SELECT count(*) FROM indexes", [], |r| r.get(0))?;
    if count as usize >= MAX_INDEXES {
        return Err(Error::InvalidIndex(format!("a store keeps at most {MAX_INDEXES} indexes")));
    }
    let texts: Vec<String> = paths.iter().map(Path::to_string).collect();
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(&format!(
        "CREATE INDEX IF NOT EXISTS {name} ON docs ({}, id) WHERE {}",
        columns.join(", "),
        rows_of(collection)
    ))
    .map_err(|e| match super::find::is_malformed_json(&e) {
        true => Error::Corrupt(format!("a stored view of {collection} is not JSON (see Store::quarantined): {e}")),
        false => e.into(),
    })?;
    tx.execute(
        "INSERT OR IGNORE INTO indexes (name, collection, paths) VALUES (?1, ?2, ?3)",
        params![name, collection, serde_json::to_string(&texts).map_err(|e| Error::Corrupt(e.to_string()))?],
    )?;
    tx.commit()?;
    log::info!("index {name} on {collection} ({}) created", texts.join(", "));
    Ok(true)
}

/// Drops the index on `paths` of `collection`. Returns whether there was one.
pub(crate) fn drop(conn: &Connection, collection: &str, paths: &[Path]) -> Result<bool> {
    let name = index_name(collection, paths);
    let tx = conn.unchecked_transaction()?;
    let removed = tx.execute("DELETE FROM indexes WHERE name = ?1", params![name])?;
    tx.execute_batch(&format!("DROP INDEX IF EXISTS {name}"))?;
    tx.commit()?;
    Ok(removed > 0)
}

/// Every declared index, by collection and name.
pub(crate) fn list(conn: &Connection) -> Result<Vec<Index>> {
    let mut stmt = conn.prepare_cached("SELECT name, collection, paths FROM indexes ORDER BY collection, name")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (name, collection, paths) = row?;
        let texts: Vec<String> =
            serde_json::from_str(&paths).map_err(|e| Error::Corrupt(format!("index {name}: {e}")))?;
        let paths = texts
            .iter()
            .map(|t| Path::parse(t).map_err(|e| Error::Corrupt(format!("index {name}: {e}"))))
            .collect::<Result<Vec<_>>>()?;
        out.push(Index { collection, paths, name });
    }
    Ok(out)
}
