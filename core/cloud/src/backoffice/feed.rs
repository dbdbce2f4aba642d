//! The change feed: every change the database takes in, exactly once, resumable from a cursor.
//!
//! An event is one change: the document's collection and id, the change's author and counters (`start`, `end`),
//! and the document as it is now (unless asked without). A document's state merged from a device that folded
//! changes into it (issue 17) is one event per author whose changes it brought, with `merged`: exactly the
//! counter ranges it brought (`start` and `end` span them) — changes the database holds without their content.
//!
//! Change rows are numbered (`seq`) as they are inserted, not as they commit: a transaction that started first may
//! commit last, so reading "seq after the last one seen" would skip its rows. Each row therefore also records the
//! transaction that wrote it (`xact`, schema version 3), and the feed reads only rows of transactions older than
//! every transaction still running (PostgreSQL's snapshot `xmin`): those are final, none can appear among them
//! later. Rows come in `(xact, seq)` order, and the cursor is the last row's pair, written `XACT.SEQ`. A consumer
//! that stores the cursor with what it did with the events, and comes back with it, gets every change once — also
//! across its own restarts and across relays (the cursor means the same on every relay of the database).
//!
//! A long poll: with nothing new, the request waits (up to `wait` seconds) until a commit is announced, then reads
//! again. Or a stream of server-sent events (`/v1/feed/stream`), each event's `id` its cursor, so that a client
//! that reconnects with `Last-Event-ID` (browsers' `EventSource` does) goes on where it stopped. A transaction that
//! stays open holds the feed back for as long (the `/metrics` lag says how long).

use super::{blocking, ApiError, Authorized, BackOffice};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use serde::Deserialize;
use serde_json::{json, Value as Json_};
use shoaldb::store::RangeSet;
use shoaldb::{Document, PeerId};
use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

/// The most events one response carries.
pub const MAX_EVENTS: usize = 1000;

/// The longest a poll waits for news, in seconds.
pub const MAX_WAIT_SECS: u64 = 30;

/// How often a waiting poll reads again even without an announcement (a transaction that held the feed back may
/// have ended without writing changes).
const RECHECK: Duration = Duration::from_secs(1);

/// A position in the feed: after the change `seq` of the transaction `xact`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// The transaction id (PostgreSQL `xid8`).
    pub xact: u64,
    /// The change's number.
    pub seq: i64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.xact, self.seq)
    }
}

impl FromStr for Cursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Cursor, String> {
        let bad = || format!("a cursor is XACT.SEQ (as the feed returned it), not {s:?}");
        let (xact, seq) = s.split_once('.').ok_or_else(bad)?;
        let seq: i64 = seq.parse().map_err(|_| bad())?;
        if seq < 0 {
            return Err(bad());
        }
        Ok(Cursor { xact: xact.parse().map_err(|_| bad())?, seq })
    }
}

#[derive(Deserialize)]
pub(super) struct PollParams {
    /// Where to start: a cursor from an earlier response; `now` for only what comes next; absent for the start.
    after: Option<String>,
    limit: Option<usize>,
    /// Seconds to wait for news when there is none (0: answer at once).
    wait: Option<u64>,
    /// Whether each event carries the document's current JSON view (default true).
    documents: Option<bool>,
}

/// `GET /v1/feed`.
pub(super) async fn poll(
    _: Authorized,
    State(state): State<Arc<BackOffice>>,
    Query(p): Query<PollParams>,
) -> Result<Json<Json_>, ApiError> {
    let limit = p.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_EVENTS {
        return Err(ApiError::bad_request(format!("limit must be 1 to {MAX_EVENTS}")));
    }
    let wait = Duration::from_secs(p.wait.unwrap_or(0));
    if wait > Duration::from_secs(MAX_WAIT_SECS) {
        return Err(ApiError::bad_request(format!("wait is at most {MAX_WAIT_SECS} seconds")));
    }
    let documents = p.documents.unwrap_or(true);
    let after = start(&state, p.after.as_deref()).await?;
    let _permit = if wait.is_zero() {
        None
    } else {
        Some(state.waiting.try_acquire().map_err(|_| {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "too many polls are waiting; retry shortly")
        })?)
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut commits = state.commits.clone();
    loop {
        commits.borrow_and_update();
        let st = state.clone();
        let events = blocking(move || read(&mut *st.client()?, after, limit, documents)).await?;
        if !events.is_empty() || tokio::time::Instant::now() >= deadline {
            let cursor = events.last().map_or(after, |(c, _)| *c);
            let events: Vec<Json_> = events.into_iter().map(|(_, e)| e).collect();
            return Ok(Json(json!({"events": events, "cursor": cursor.to_string()})));
        }
        let next = deadline.min(tokio::time::Instant::now() + RECHECK);
        let _ = tokio::time::timeout_at(next, commits.changed()).await;
    }
}

/// Where a reader starts: after `after` (a cursor; `now`; nothing: the beginning).
async fn start(state: &Arc<BackOffice>, after: Option<&str>) -> Result<Cursor, ApiError> {
    match after {
        None | Some("") => Ok(Cursor::default()),
        Some("now") => {
            let st = state.clone();
            blocking(move || now(&mut *st.client()?)).await
        }
        Some(text) => text.parse().map_err(ApiError::bad_request),
    }
}

#[derive(Deserialize)]
pub(super) struct StreamParams {
    /// As for the poll; the `Last-Event-ID` header, when present, takes precedence.
    after: Option<String>,
    documents: Option<bool>,
}

/// What an event stream holds between events.
struct Streaming {
    state: Arc<BackOffice>,
    cursor: Cursor,
    documents: bool,
    commits: tokio::sync::watch::Receiver<u64>,
    ready: VecDeque<(Cursor, Json_)>,
    /// Its place among the feed's readers ([`super::MAX_WAITING_POLLS`]), held while it is open.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// `GET /v1/feed/stream`: the feed as server-sent events (`event: change`, `id:` the cursor, `data:` the event).
pub(super) async fn stream(
    _: Authorized,
    State(state): State<Arc<BackOffice>>,
    headers: HeaderMap,
    Query(p): Query<StreamParams>,
) -> Result<Sse<impl Stream<Item = Result<Event, std::convert::Infallible>>>, ApiError> {
    let resume = headers.get("last-event-id").map(|v| v.to_str().map(str::to_string));
    let after = match resume {
        Some(Ok(id)) => start(&state, Some(&id)).await?,
        Some(Err(_)) => return Err(ApiError::bad_request("Last-Event-ID is not a cursor")),
        None => start(&state, p.after.as_deref()).await?,
    };
    let st = state.clone();
    blocking(move || check_floor(&mut *st.client()?, after)).await?;
    let permit = state.waiting.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "too many feed readers are open; retry shortly")
    })?;
    let streaming = Streaming {
        commits: state.commits.clone(),
        state,
        cursor: after,
        documents: p.documents.unwrap_or(true),
        ready: VecDeque::new(),
        _permit: permit,
    };
    let events = futures::stream::unfold(streaming, |mut s| async move {
        loop {
            if let Some((cursor, event)) = s.ready.pop_front() {
                s.cursor = cursor;
                let event = Event::default().event("change").id(cursor.to_string()).data(event.to_string());
                return Some((Ok(event), s));
            }
            s.commits.borrow_and_update();
            let (st, after, documents) = (s.state.clone(), s.cursor, s.documents);
            match blocking(move || read(&mut *st.client()?, after, MAX_EVENTS, documents)).await {
                Ok(events) if !events.is_empty() => s.ready.extend(events),
                Ok(_) => {
                    let _ = tokio::time::timeout(RECHECK, s.commits.changed()).await;
                }
                Err(e) => {
                    // The client reconnects with its Last-Event-ID; nothing is lost.
                    log::warn!("back office: a feed stream ends: {}", e.message());
                    return None;
                }
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// A cursor at the feed's present: what is final now is behind it.
fn now(client: &mut postgres::Client) -> Result<Cursor, ApiError> {
    let xmin: String = client.query_one("SELECT pg_snapshot_xmin(pg_current_snapshot())::text", &[])?.get(0);
    let xact = xmin.parse().map_err(|_| ApiError::internal(format!("a transaction id {xmin:?}")))?;
    Ok(Cursor { xact, seq: 0 })
}

/// Refuses a cursor before the newest change the cloud folded out of its log ([`PgReplica::compact`]): changes
/// after it may be gone, so the reader would miss them. Answered `410 Gone`: read the documents, then go on from
/// `now`.
///
/// [`PgReplica::compact`]: crate::PgReplica::compact
fn check_floor(client: &mut postgres::Client, after: Cursor) -> Result<(), ApiError> {
    let behind = client.query_opt(
        "SELECT xact::text, seq FROM feed_floor WHERE (xact, seq) > ($1::text::xid8, $2::bigint)",
        &[&after.xact.to_string(), &after.seq],
    )?;
    match behind {
        None => Ok(()),
        Some(r) => Err(ApiError::new(
            StatusCode::GONE,
            "compacted",
            format!(
                "changes after {after} were folded out of the log (it keeps them for the feed's retention); read \
                 the documents, then follow the feed from `now` (the oldest cursor it still serves is {}.{})",
                r.get::<_, String>(0),
                r.get::<_, i64>(1)
            ),
        )),
    }
}

/// Up to `limit` events after `after`, each with its cursor.
pub(crate) fn read(
    client: &mut postgres::Client,
    after: Cursor,
    limit: usize,
    documents: bool,
) -> Result<Vec<(Cursor, Json_)>, ApiError> {
    check_floor(client, after)?;
    // Changes and merged states share one numbering and one order; each is read in the order of its index.
    let rows = client.query(
        "SELECT e.xact::text, e.seq, d.collection, d.doc_id, e.author, e.start_ctr, e.end_ctr, \
                CASE WHEN $4 THEN d.state END, e.ranges \
         FROM ((SELECT c.xact, c.seq, c.doc, c.author, c.start_ctr, c.end_ctr, NULL::bytea AS ranges FROM changes c \
                WHERE (c.xact, c.seq) > ($1::text::xid8, $2::bigint) \
                AND c.xact < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY c.xact, c.seq LIMIT $3) \
               UNION ALL \
               (SELECT m.xact, m.seq, m.doc, m.author, 0::bigint, 0::bigint, m.ranges FROM merged m \
                WHERE (m.xact, m.seq) > ($1::text::xid8, $2::bigint) AND NOT m.compacted \
                AND m.xact < pg_snapshot_xmin(pg_current_snapshot()) ORDER BY m.xact, m.seq LIMIT $3)) AS e \
         JOIN docs d ON d.num = e.doc ORDER BY e.xact, e.seq LIMIT $3",
        &[&after.xact.to_string(), &after.seq, &(limit as i64), &documents],
    )?;
    rows.iter()
        .map(|r| {
            let xact: String = r.get(0);
            let cursor = Cursor {
                xact: xact.parse().map_err(|_| ApiError::internal(format!("a transaction id {xact:?}")))?,
                seq: r.get(1),
            };
            let (collection, id): (String, String) = (r.get(2), r.get(3));
            let (mut start, mut end) = (r.get::<_, i64>(5), r.get::<_, i64>(6));
            let mut merged = None;
            if let Some(ranges) = r.get::<_, Option<&[u8]>>(8) {
                let ranges: RangeSet = postcard::from_bytes(ranges)
                    .map_err(|e| ApiError::internal(format!("the ranges of a merged state: {e}")))?;
                let spans: Vec<(u64, u64)> = ranges.ranges().to_vec();
                start = spans.first().map_or(0, |s| s.0 as i64);
                end = spans.last().map_or(0, |s| s.1 as i64);
                merged = Some(spans);
            }
            let mut event = json!({
                "cursor": cursor.to_string(),
                "collection": collection,
                "id": id,
                "author": PeerId(r.get::<_, i64>(4) as u64).to_string(),
                "start": start,
                "end": end,
            });
            if let Some(spans) = merged {
                event["merged"] = json!(spans);
            }
            if let Some(state) = r.get::<_, Option<Vec<u8>>>(7) {
                let view = Document::decode(&state).map_err(|e| {
                    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt", format!("document {id:?}: {e}"))
                })?;
                event["document"] = view.view(&id).unwrap_or(Json_::Null);
            }
            Ok((cursor, event))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::Cursor;

    #[test]
    fn cursors_read_back_and_refuse_anything_else() {
        let c = Cursor { xact: 7_000_000_123, seq: 42 };
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
        for bad in ["", "1", "1.", ".1", "a.1", "1.-2", "1.2.3", "-1.2", "99999999999999999999.1"] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?} was taken");
        }
        assert!(Cursor { xact: 1, seq: 9 } < Cursor { xact: 2, seq: 1 });
    }
}
