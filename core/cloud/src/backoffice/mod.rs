//! The back office: an HTTP API on a relay for server-side systems.
//!
//! - `GET /v1/collections/{collection}/documents?filter=…&params=…&limit=…&after=…`: the documents a filter (the
//!   query language phones use, [`shoaldb::Filter`]) matches, in id order, a page at a time;
//! - `GET|PUT|PATCH|DELETE /v1/collections/{collection}/documents/{id}`: read a document; upsert, update or remove
//!   it as the cloud's own author ([`crate::writer`]: signed, checked against the relay's certificate);
//! - `GET /v1/feed?after=CURSOR&limit=…&wait=…`: the change feed, a long poll with a resumable cursor: every change
//!   the database takes in, exactly once, in the order of the transactions that wrote them ([`feed`]); and
//!   `GET /v1/feed/stream`, the same as server-sent events (resumed with `Last-Event-ID`);
//! - `GET /health` (for load balancers: PostgreSQL reachable, following the other relays), `GET /metrics`
//!   (Prometheus text: links, devices, changes/s, feed lag), `GET /openapi.json` (this API, described).
//!
//! Every route but `/health` and `/openapi.json` needs `Authorization: Bearer TOKEN` (the token the relay was
//! started with). Everything a request asks for is bounded before it is done: body size, page sizes, the rows one
//! query may scan, how long a poll waits and how many wait at once; a bound exceeded is an error response, never
//! work done. Errors are JSON: `{"error": CODE, "message": TEXT}`.
//!
//! The back office reads through a pool of its own (a few connections), so that its load does not take the
//! connections sync needs.

mod documents;
pub mod feed;
mod ops;

use crate::writer::CloudWriter;
use crate::{CloudError, PgReplica};
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use r2d2_postgres::PostgresConnectionManager;
use shoaldb::node::ReplicaNode;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{watch, Semaphore};

/// The largest request body (a document to write), in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The most long polls and event streams of the feed open at once on one relay; more are answered 503 at once.
pub const MAX_WAITING_POLLS: usize = 256;

/// Connections in the back office's own pool.
const POOL_CONNECTIONS: u32 = 4;

/// How the back office starts.
#[derive(Clone)]
pub struct BackOfficeConfig {
    /// Where it listens (HTTP/1.1; put TLS in front of it, as for any internal service).
    pub listen: SocketAddr,
    /// The bearer token requests must carry.
    pub token: String,
    /// A PostgreSQL streaming replica (a hot standby of the relays' database) to serve reads from — queries,
    /// documents, the feed, metrics — so that back-office load stays off the primary. Writes still go to the
    /// primary; a read right after a write may not see it yet (the standby replays with a lag, shown in
    /// `/metrics`). `None`: read from the primary.
    pub read_replica: Option<String>,
}

impl BackOfficeConfig {
    /// A back office on `listen` for requests carrying `token`, reading from the primary.
    pub fn new(listen: SocketAddr, token: impl Into<String>) -> BackOfficeConfig {
        BackOfficeConfig { listen, token: token.into(), read_replica: None }
    }
}

impl std::fmt::Debug for BackOfficeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackOfficeConfig")
            .field("listen", &self.listen)
            .field("read_replica", &self.read_replica.is_some())
            .finish_non_exhaustive()
    }
}

type Pool = r2d2::Pool<PostgresConnectionManager<postgres::NoTls>>;

/// What the relay tells the back office about following the other relays.
#[derive(Debug, Default)]
pub struct FollowerStatus {
    /// Whether the follower is listening now.
    pub connected: std::sync::atomic::AtomicBool,
    /// Notifications taken in since the relay started.
    pub notifications: std::sync::atomic::AtomicU64,
}

/// What the handlers share.
pub(crate) struct BackOffice {
    pool: crate::offruntime::OffRuntime<Pool>,
    writer: CloudWriter,
    /// The blake3 hash of the token.
    token: [u8; 32],
    node: ReplicaNode,
    follower: Arc<FollowerStatus>,
    /// Changes whenever the database took in changes (any relay's commit).
    commits: watch::Receiver<u64>,
    waiting: Arc<Semaphore>,
    rate: ops::Rate,
}

/// A running back office.
pub(crate) struct Server {
    pub(crate) addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Start serving `config` (connecting its pool and claiming its writer's author id first).
    pub(crate) async fn start(
        config: &BackOfficeConfig,
        url: &str,
        replica: PgReplica,
        node: ReplicaNode,
        access: shoaldb::security::Access,
        follower: Arc<FollowerStatus>,
        commits: watch::Receiver<u64>,
    ) -> Result<Server, CloudError> {
        let url = url.to_string();
        let reads = config.read_replica.clone().unwrap_or_else(|| url.clone());
        let (pool, writer) = tokio::task::spawn_blocking(move || -> Result<_, CloudError> {
            let parse = |url: &str| {
                url.parse::<postgres::Config>()
                    .map_err(|e| CloudError::Config(format!("the PostgreSQL URL: {}", crate::describe(&e))))
            };
            let manager = PostgresConnectionManager::new(parse(&reads)?, postgres::NoTls);
            // A request waits for a connection a few seconds at most, then is answered 503.
            let pool = r2d2::Pool::builder()
                .max_size(POOL_CONNECTIONS)
                .connection_timeout(std::time::Duration::from_secs(5))
                .build(manager)?;
            let mut primary = parse(&url)?.connect(postgres::NoTls)?;
            let writer = CloudWriter::new(replica, &access, &mut primary)?;
            drop(primary);
            Ok((pool, writer))
        })
        .await
        .map_err(|e| CloudError::Config(format!("starting the back office: {e}")))??;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| CloudError::Config(format!("the back office cannot listen on {}: {e}", config.listen)))?;
        let addr = listener.local_addr().map_err(|e| CloudError::Config(format!("the back office's address: {e}")))?;
        let state = Arc::new(BackOffice {
            pool: crate::offruntime::OffRuntime::new(pool),
            writer,
            token: *blake3::hash(config.token.as_bytes()).as_bytes(),
            node,
            follower,
            commits,
            waiting: Arc::new(Semaphore::new(MAX_WAITING_POLLS)),
            rate: ops::Rate::default(),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = router(state);
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = served.await {
                log::error!("the back office stopped: {e}");
            }
        });
        log::info!("back office listening on http://{addr}");
        Ok(Server { addr, stop: Some(stop), task })
    }

    /// Stop taking requests, let those under way finish (a waiting poll answers at once), and return.
    pub(crate) async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Long polls end within their wait; do not hang a relay's shutdown on a client that never reads.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), &mut self.task).await;
        self.task.abort();
    }
}

fn router(state: Arc<BackOffice>) -> Router {
    Router::new()
        .route("/health", get(ops::health))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi))
        .route("/v1/collections/{collection}/documents", get(documents::query))
        .route(
            "/v1/collections/{collection}/documents/{id}",
            get(documents::get).put(documents::put).patch(documents::patch).delete(documents::delete),
        )
        .route("/v1/feed", get(feed::poll))
        .route("/v1/feed/stream", get(feed::stream))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// A request that carried the right bearer token.
pub(crate) struct Authorized;

impl FromRequestParts<Arc<BackOffice>> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<BackOffice>) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "a bearer token is required"))?;
        // Comparing hashes: the time taken says nothing about how much of the token was right.
        if *blake3::hash(presented.trim().as_bytes()).as_bytes() != state.token {
            return Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the token is not valid"));
        }
        Ok(Authorized)
    }
}

/// An error response: `{"error": code, "message": message}` with its status.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    /// What went wrong, in words.
    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// Something that cannot happen with a sound database: logged, answered 500.
    pub(crate) fn internal(message: impl Into<String>) -> ApiError {
        let message = message.into();
        log::error!("back office: {message}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// PostgreSQL or the pool failed: logged, and answered as unavailable (the request may be retried).
    pub(crate) fn storage(e: &dyn std::error::Error) -> ApiError {
        let message = crate::describe(e);
        log::warn!("back office: {message}");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.code, "message": self.message});
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<r2d2::Error> for ApiError {
    fn from(e: r2d2::Error) -> ApiError {
        ApiError::storage(&e)
    }
}

impl From<postgres::Error> for ApiError {
    fn from(e: postgres::Error) -> ApiError {
        ApiError::storage(&e)
    }
}

impl BackOffice {
    /// A connection of the back office's pool.
    pub(crate) fn client(
        &self,
    ) -> Result<r2d2::PooledConnection<PostgresConnectionManager<postgres::NoTls>>, ApiError> {
        let pool = self.pool.get().ok_or_else(|| ApiError::internal("the back office is closing"))?;
        Ok(pool.get()?)
    }
}

/// Run `f` on the blocking pool (every PostgreSQL call is blocking).
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        log::error!("back office task: {e}");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the request's task failed")
    })?
}
