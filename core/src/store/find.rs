//! Running a [`Query`] on a connection: the filter, sort and limit in SQLite (through [`crate::query::sql`] and the
//! declared [indexes](super::indexes)), and only the rows it returns parsed and checked again in Rust.
//!
//! Results are exactly those of the filter language's evaluator ([`Query::matches`], [`Query::compare`]):
//!
//! - Every returned row is evaluated again, so a filter SQL can only approximate (a superset) is still exact.
//! - SQL orders rows by each sort key's rank and value. That order never contradicts the exact one and keeps equal
//!   values together; only rows whose keys SQL cannot tell apart (arrays, objects, integers beyond `i64`) may be
//!   out of order among themselves. So, with a limit of `n`, reading stops after the `n`th match unless its keys
//!   are of that kind; then the rows SQL cannot tell from it are read too. The rows read are sorted exactly.
//! - Documents whose views hold large values beside them (`parts > 0`: SQL sees `null` there) are read apart and
//!   evaluated in Rust; there are few (values over 16 KiB).

use std::cmp::Ordering;

use rusqlite::types::Value as SqlValue;
use rusqlite::Connection;
use serde_json::Value as Json;

use super::{docs, indexes};
use crate::query::sql::{self, SortValue, SqlFilter};
use crate::query::Query;
use crate::{Error, Result};

/// How a query runs: what [`crate::Store::explain`] tells.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryPlan {
    /// The declared indexes SQLite uses (their names, as [`crate::store::Index::name`]); empty for a scan of the
    /// collection.
    pub indexes: Vec<String>,
    /// Whether the filter is evaluated exactly in SQL. When not, SQL selects a superset of the matches and the rows
    /// it returns are checked again.
    pub exact_filter: bool,
    /// Whether SQL sorts, so that reading stops at the limit (without a limit, or with a sort key SQL cannot name,
    /// every match is read and sorted in memory).
    pub sorted_in_sql: bool,
    /// SQLite's own plan (`EXPLAIN QUERY PLAN`), one step per line.
    pub steps: Vec<String>,
    /// The SQL statement.
    pub sql: String,
}

/// The longest statement kept prepared between queries, in bytes.
const MAX_CACHED_SQL: usize = 16 * 1024;

/// The statement for `query` on `collection`, its arguments, and what it does.
struct Statement {
    sql: String,
    args: Vec<SqlValue>,
    filter_exact: bool,
    /// Whether SQL sorts (with a limit, when every sort key can be named in SQL).
    sorted: bool,
    /// Whether SQL puts rows of equal keys in id order (as the query does); otherwise in reverse.
    ties_in_id_order: bool,
    /// The `LIMIT` of the statement, if any.
    sql_limit: Option<usize>,
}

fn statement(collection: &str, query: &Query, limit: Option<usize>) -> Statement {
    let filter = match &query.filter {
        Some(f) => sql::compile(f, &query.params),
        None => SqlFilter { sql: "1".into(), args: Vec::new(), exact: true },
    };
    let mut sql =
        format!("SELECT doc, id, view, parts FROM docs WHERE {} AND {}", indexes::rows_of(collection), filter.sql);
    // Without a limit every match is read, and sorted exactly in memory: SQL need not sort.
    let sort = sql::sort_keys(&query.sort).filter(|_| limit.is_some());
    // Ties go by id ascending. The id is ordered in the direction of the last key, so that an index on the keys
    // (whose last column is the id) serves the whole order when the keys share one direction; when that is
    // descending, SQL gives ties in reverse, so the whole group tied at the limit is read and sorted here.
    let ties_in_id_order = !sort.as_ref().and_then(|keys| keys.last()).is_some_and(|k| k.descending);
    let mut sql_limit = None;
    if let (Some(n), Some(keys)) = (limit, &sort) {
        let mut order = Vec::new();
        for key in keys {
            let dir = if key.descending { " DESC" } else { "" };
            order.push(format!("{}{dir}", key.rank));
            order.push(format!("{}{dir}", key.value));
        }
        order.push(if ties_in_id_order { "id".into() } else { "id DESC".into() });
        sql.push_str(&format!(" ORDER BY {}", order.join(", ")));
        // Only an exact filter lets SQL stop at a limit (the rows are checked again otherwise, and may fail). With
        // ties in reverse, a few rows beyond it show where the tied group ends.
        if filter.exact {
            let l = if ties_in_id_order { n } else { n.saturating_mul(2).saturating_add(16) };
            sql.push_str(&format!(" LIMIT {l}"));
            sql_limit = Some(l);
        }
    }
    Statement {
        sql,
        args: filter.args,
        filter_exact: filter.exact,
        sorted: sort.is_some(),
        ties_in_id_order,
        sql_limit,
    }
}

/// The documents of `collection` matching `query`, in its order, up to its limit: (id, view).
pub(crate) fn run(conn: &Connection, collection: &str, query: &Query) -> Result<Vec<(String, Json)>> {
    query.validate()?;
    if query.limit == Some(0) {
        return Ok(Vec::new());
    }
    let mut out = match read_whole_views(conn, collection, query, query.limit) {
        Ok(mut out) => {
            out.extend(read_in_memory(conn, collection, query, Rows::WithParts)?);
            out
        }
        // A stored view that is not JSON (a damaged file): SQL cannot read the collection, so every document is read
        // and evaluated here, the damaged ones skipped (quarantined).
        Err(Error::Database(e)) if is_malformed_json(&e) => {
            log::warn!(
                "{collection}: a stored view is not JSON; the query reads every document (see Store::quarantined)"
            );
            read_in_memory(conn, collection, query, Rows::All)?
        }
        Err(e) => return Err(e),
    };
    query.order_and_limit(&mut out);
    Ok(out)
}

/// Whether SQLite failed on a JSON text that does not parse.
pub(crate) fn is_malformed_json(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(_, Some(message)) if message.contains("malformed JSON"))
}

/// The matches among the documents whose views are whole: at least the first `limit` in the query's order
/// (all of them without a limit).
fn read_whole_views(
    conn: &Connection,
    collection: &str,
    query: &Query,
    limit: Option<usize>,
) -> Result<Vec<(String, Json)>> {
    let st = statement(collection, query, limit);
    // Long statements (long filters) are not kept in the connection's cache of prepared statements.
    let (mut cached, mut uncached);
    let stmt: &mut rusqlite::Statement<'_> = if st.sql.len() <= MAX_CACHED_SQL {
        cached = conn.prepare_cached(&st.sql)?;
        &mut cached
    } else {
        uncached = conn.prepare(&st.sql)?;
        &mut uncached
    };
    let mut rows = stmt.query(rusqlite::params_from_iter(st.args.iter()))?;
    let mut out: Vec<(String, Json)> = Vec::new();
    // Once the limit is reached: the sort keys of the last match taken within it.
    let mut boundary: Option<Vec<SortValue>> = None;
    // Whether a row past the boundary showed that no later row can belong before it.
    let mut closed = false;
    let mut read = 0usize;
    while let Some(r) = rows.next()? {
        read += 1;
        let id: String = r.get(1)?;
        let Some(view) = docs::row_view(conn, r, [0, 2, 3], &format_args!("{collection}/{id}"))? else { continue };
        // What SQL sorted this row by (the same values, read from the view).
        let sort_values: Vec<SortValue> = match st.sorted {
            true => query.sort.iter().map(|k| SortValue::of(k.path.resolve(&view))).collect(),
            false => Vec::new(),
        };
        if let Some(b) = &boundary {
            // Past the limit: only rows SQL cannot tell from the last one taken may still belong before it.
            if coarse_cmp(&sort_values, b).is_ne() {
                closed = true;
                break;
            }
        }
        if !st.filter_exact && !query.matches(&view)? {
            continue;
        }
        out.push((id, view));
        if let (Some(n), None, true) = (limit, &boundary, st.sorted) {
            if out.len() >= n {
                if st.ties_in_id_order && sort_values.iter().all(SortValue::is_exact) {
                    closed = true;
                    break;
                }
                boundary = Some(sort_values);
            }
        }
    }
    drop(rows);
    // SQL stopped at its limit before the group tied with the last row taken ended: it may go on beyond.
    if boundary.is_some() && !closed && st.sql_limit.is_some_and(|l| read >= l) {
        return read_whole_views(conn, collection, query, None);
    }
    Ok(out)
}

/// Compares two rows' sort keys as far as SQL orders them exactly: key by key, up to the first the two hold alike
/// that SQL cannot order exactly (SQL's order of the keys after it is not theirs).
fn coarse_cmp(a: &[SortValue], b: &[SortValue]) -> Ordering {
    for (x, y) in a.iter().zip(b) {
        match x.coarse_cmp(y) {
            Ordering::Equal if x.is_exact() && y.is_exact() => continue,
            Ordering::Equal => return Ordering::Equal,
            other => return other,
        }
    }
    Ordering::Equal
}

/// Which documents [`read_in_memory`] reads.
enum Rows {
    /// Those whose views hold large values beside them.
    WithParts,
    /// Every one.
    All,
}

/// The matches among some documents of the collection, read whole and evaluated in Rust.
fn read_in_memory(conn: &Connection, collection: &str, query: &Query, rows: Rows) -> Result<Vec<(String, Json)>> {
    let mut stmt = conn.prepare_cached(match rows {
        Rows::WithParts => {
            "SELECT doc, id, view, parts FROM docs WHERE collection = ?1 AND view IS NOT NULL AND parts > 0"
        }
        Rows::All => "SELECT doc, id, view, parts FROM docs WHERE collection = ?1 AND view IS NOT NULL",
    })?;
    let mut rows = stmt.query([collection])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let id: String = r.get(1)?;
        let Some(view) = docs::row_view(conn, r, [0, 2, 3], &format_args!("{collection}/{id}"))? else { continue };
        if query.matches(&view)? {
            out.push((id, view));
        }
    }
    Ok(out)
}

/// How `query` runs on `collection` (see [`crate::Store::explain`]).
pub(crate) fn explain(conn: &Connection, collection: &str, query: &Query) -> Result<QueryPlan> {
    query.validate()?;
    let st = statement(collection, query, query.limit);
    // (Read first: it brings the connection's view of the schema up to date, which EXPLAIN alone does not.)
    let declared = indexes::list(conn)?;
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {}", st.sql))?;
    let steps = stmt
        .query_map(rusqlite::params_from_iter(st.args.iter()), |r| r.get::<_, String>(3))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    // (Each declared index once: the list holds each name once.)
    let used: Vec<String> = declared
        .into_iter()
        .filter(|ix| steps.iter().any(|s| s.split_whitespace().any(|w| w == ix.name)))
        .map(|ix| ix.name)
        .collect();
    Ok(QueryPlan { indexes: used, exact_filter: st.filter_exact, sorted_in_sql: st.sorted, steps, sql: st.sql })
}
