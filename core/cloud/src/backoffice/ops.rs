//! Operations: health for load balancers, metrics for Prometheus, the API's own description.

use super::{blocking, ApiError, Authorized, BackOffice};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The OpenAPI description of the back office.
const OPENAPI: &str = include_str!("openapi.json");

/// The window over which `shoal_changes_per_second` is measured.
const RATE_WINDOW: Duration = Duration::from_secs(60);

/// The change log's position at the last few scrapes, for a rate.
#[derive(Debug, Default)]
pub(crate) struct Rate {
    samples: Mutex<VecDeque<(Instant, i64)>>,
}

impl Rate {
    /// Record `position` now; the changes per second since the oldest sample of the window (0 with none).
    fn sample(&self, position: i64) -> f64 {
        let now = Instant::now();
        let mut samples = self.samples.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while samples.len() > 1 && samples.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
            samples.pop_front();
        }
        let rate = match samples.front() {
            Some(&(t, p)) if now.duration_since(t) >= Duration::from_millis(500) => {
                (position - p).max(0) as f64 / now.duration_since(t).as_secs_f64()
            }
            _ => 0.0,
        };
        samples.push_back((now, position));
        if samples.len() > 256 {
            samples.pop_front();
        }
        rate
    }
}

/// `GET /health`: 200 when PostgreSQL answers and the relay follows the other relays' commits, 503 otherwise.
pub(super) async fn health(State(state): State<Arc<BackOffice>>) -> impl IntoResponse {
    let st = state.clone();
    let postgres = tokio::time::timeout(
        Duration::from_secs(3),
        blocking(move || {
            st.client()?.simple_query("SELECT 1")?;
            Ok(())
        }),
    )
    .await;
    let postgres = matches!(postgres, Ok(Ok(())));
    let following = state.follower.connected.load(Ordering::Acquire);
    let ok = postgres && following;
    let body = json!({
        "status": if ok { "ok" } else { "unavailable" },
        "postgres": postgres,
        "following": following,
        "links": state.node.link_count(),
    });
    (if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, Json(body))
}

/// `GET /metrics`: Prometheus text format.
pub(super) async fn metrics(
    _: Authorized,
    State(state): State<Arc<BackOffice>>,
) -> Result<impl IntoResponse, ApiError> {
    let st = state.clone();
    let (position, lag, replay) = blocking(move || {
        let mut client = st.client()?;
        let row = client.query_one(
            "SELECT (SELECT coalesce(max(seq), 0) FROM changes), \
                    (SELECT coalesce(extract(epoch FROM now() - min(xact_start))::float8, 0) \
                     FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND datname = current_database()), \
                    CASE WHEN pg_is_in_recovery() \
                         THEN coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8, 0) \
                         ELSE 0 END",
            &[],
        )?;
        Ok((row.get::<_, i64>(0), row.get::<_, f64>(1), row.get::<_, f64>(2)))
    })
    .await?;
    let rate = state.rate.sample(position);
    let devices = state.node.peers().iter().filter(|p| p.hops == 1).count();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}");
    };
    metric("shoal_links", "gauge", "Links open on this relay.", state.node.link_count() as f64);
    metric("shoal_devices", "gauge", "Devices linked to this relay directly.", devices as f64);
    metric(
        "shoal_change_log_position",
        "counter",
        "The change log's position (changes taken in by the database, all relays).",
        position as f64,
    );
    metric("shoal_changes_per_second", "gauge", "Changes taken in per second over the last minute of scrapes.", rate);
    metric(
        "shoal_feed_lag_seconds",
        "gauge",
        "How long the oldest open write transaction has held the change feed back.",
        lag,
    );
    metric(
        "shoal_read_replica_lag_seconds",
        "gauge",
        "When reads come from a streaming replica: how far behind the primary its replay is (0 otherwise).",
        replay,
    );
    metric(
        "shoal_follower_connected",
        "gauge",
        "Whether this relay listens for the other relays' commits (1) or is reconnecting (0).",
        if state.follower.connected.load(Ordering::Acquire) { 1.0 } else { 0.0 },
    );
    metric(
        "shoal_follower_notifications_total",
        "counter",
        "Commit announcements this relay took in.",
        state.follower.notifications.load(Ordering::Relaxed) as f64,
    );
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out))
}

/// `GET /openapi.json`.
pub(super) async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}
