//! `shoal-cloud`: run one relay of Shoal's cloud peer.

use shoaldb::security::AppSecret;
use shoaldb_cloud::{CloudError, Relay, RelayConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "\
usage:
  shoal-cloud --postgres URL --listen HOST:PORT (--keys PATH | --secret-file F) [--name NAME] [--connections N]
              [--websocket HOST:PORT] [--http HOST:PORT --http-token-file F [--read-replica URL]]
              [--horizon-days N] [--feed-retention-days N] [--no-compaction]
      run a relay of the cloud peer on the PostgreSQL database URL (e.g. postgres://shoal@127.0.0.1/shoal;
      its schema is created or migrated first), accepting devices on HOST:PORT, until SIGINT/SIGTERM, which
      close every link cleanly first. Any number of relays may serve one database.
      --keys PATH: certificate mode. PATH is a Shoal store holding the relay's keys and certificate, made like
      any device's: `shoal --db PATH enrol request NAME`, the authority issues, `shoal --db PATH enrol install`.
      --secret-file F: development mode (devices holding the app secret in F).
      --websocket HOST:PORT: also accept devices' sync links inside WebSocket connections there (any path;
      for HTTP load balancers: terminate TLS there, the links are Noise-encrypted inside either way).
      --http HOST:PORT: serve the back office's HTTP API there (documents, writes as the cloud, the change
      feed, /health, /metrics, /openapi.json); requests carry `Authorization: Bearer TOKEN`, TOKEN being the
      first line of the file given with --http-token-file (required with --http). --read-replica URL: serve
      the back office's reads from that PostgreSQL streaming replica (a hot standby of --postgres).
      Every hour the relay folds out of the change log what every device heard from within the horizon holds,
      and what it received longer ago than the horizon (default 30 days), once the feed's retention (default 7
      days) is over; --no-compaction keeps every change. In certificate mode a signed change is folded only
      under its document's attested state: a relay whose certificate has an `attest` grant signs documents'
      states every hour, before it compacts (devices then fold their signed changes too).
logging: JSON lines on stderr; SHOAL_LOG=off|error|warn|info|debug|trace (default info).
exit codes: 0 stopped cleanly, 1 failure, 64 bad usage.";

/// How the relay admits devices.
enum Admission {
    /// Certificate mode: the relay's keys and certificate are in this store.
    Keys(PathBuf),
    /// Development mode.
    Secret(AppSecret),
}

struct Args {
    postgres: String,
    listen: SocketAddr,
    admission: Admission,
    name: Option<String>,
    connections: Option<u32>,
    http: Option<shoaldb_cloud::BackOfficeConfig>,
    websocket: Option<SocketAddr>,
    compaction: Option<shoaldb_cloud::CloudCompaction>,
}

/// A number of days, in milliseconds.
fn days(flag: &str, text: &str) -> Result<u64, String> {
    let n: u64 = text.parse().map_err(|e| format!("{flag}: {e}"))?;
    n.checked_mul(24 * 60 * 60 * 1000).ok_or_else(|| format!("{flag}: too large"))
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("shoal-cloud: {msg}\n{USAGE}");
    ExitCode::from(64)
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut postgres, mut listen, mut admission, mut name, mut connections) = (None, None, None, None, None);
    let (mut http, mut token, mut websocket, mut read_replica) = (None, None, None, None);
    let mut compaction = Some(shoaldb_cloud::CloudCompaction::default());
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--postgres" => postgres = Some(value()?),
            "--listen" => listen = Some(value()?.parse::<SocketAddr>().map_err(|e| format!("--listen: {e}"))?),
            "--secret-file" => admission = Some(Admission::Secret(read_secret(Path::new(&value()?))?)),
            "--keys" => admission = Some(Admission::Keys(PathBuf::from(value()?))),
            "--name" => name = Some(value()?),
            "--connections" => connections = Some(value()?.parse::<u32>().map_err(|e| format!("--connections: {e}"))?),
            "--websocket" => {
                websocket = Some(value()?.parse::<SocketAddr>().map_err(|e| format!("--websocket: {e}"))?);
            }
            "--http" => http = Some(value()?.parse::<SocketAddr>().map_err(|e| format!("--http: {e}"))?),
            "--read-replica" => read_replica = Some(value()?),
            "--http-token-file" => token = Some(read_token(Path::new(&value()?))?),
            "--no-compaction" => compaction = None,
            "--horizon-days" => {
                let ms = days(&flag, &value()?)?;
                compaction.as_mut().ok_or("--horizon-days is for compaction")?.policy.horizon_ms = ms;
            }
            "--feed-retention-days" => {
                let ms = days(&flag, &value()?)?;
                compaction.as_mut().ok_or("--feed-retention-days is for compaction")?.feed_retention_ms = ms;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        postgres: postgres.ok_or("--postgres is required")?,
        listen: listen.ok_or("--listen is required")?,
        admission: admission.ok_or("--keys (certificate mode) or --secret-file (development mode) is required")?,
        name,
        connections,
        websocket,
        compaction,
        http: match (http, token) {
            (Some(listen), Some(token)) => Some(shoaldb_cloud::BackOfficeConfig { listen, token, read_replica }),
            (Some(_), None) => return Err("--http needs --http-token-file".into()),
            (None, Some(_)) => return Err("--http-token-file is for --http".into()),
            (None, None) if read_replica.is_some() => return Err("--read-replica is for --http".into()),
            (None, None) => None,
        },
    })
}

/// The back office's token: the file's first line, at least 16 characters.
fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("token file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.len() < 16 {
        return Err(format!("token file {}: the token must be at least 16 characters", path.display()));
    }
    Ok(token)
}

fn read_secret(path: &Path) -> Result<AppSecret, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("secret file {}: {e}", path.display()))?;
    let trimmed = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    AppSecret::from_bytes(trimmed).map_err(|e| format!("secret file {}: {e}", path.display()))
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(msg) => return usage(&msg),
    };
    shoaldb_cloud::logging::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            log::error!("starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let mut config = match args.admission {
            Admission::Secret(secret) => RelayConfig::new(args.postgres, args.listen, secret),
            Admission::Keys(path) => match tokio::task::spawn_blocking(move || keys(&path)).await {
                Ok(Ok((enrolment, identity))) => {
                    let mut config = RelayConfig::new(args.postgres, args.listen, enrolment);
                    config.identity = Some(identity);
                    config
                }
                Ok(Err(e)) => {
                    log::error!("{}", shoaldb_cloud::describe(&e));
                    return ExitCode::FAILURE;
                }
                Err(e) => {
                    log::error!("reading the keys: {e}");
                    return ExitCode::FAILURE;
                }
            },
        };
        if let Some(name) = args.name {
            config.name = name;
        }
        if let Some(n) = args.connections {
            config.connections = n;
        }
        config.http = args.http;
        config.websocket = args.websocket;
        config.compaction = args.compaction;
        let relay = match Relay::start(config).await {
            Ok(relay) => relay,
            Err(e) => {
                log::error!("{}", shoaldb_cloud::describe(&e));
                return ExitCode::FAILURE;
            }
        };
        if let Some(addr) = relay.listen_addr() {
            // The address on stdout, for scripts that start a relay on port 0.
            println!("listening on {addr}");
        }
        if let Some(addr) = relay.websocket_addr() {
            println!("websocket on ws://{addr}/");
        }
        if let Some(addr) = relay.http_addr() {
            println!("back office on http://{addr}");
        }
        wait_for_signal().await;
        log::info!("stopping: closing every link");
        relay.shutdown().await;
        ExitCode::SUCCESS
    })
}

/// The relay's enrolment and device key pair, from the store at `path`.
fn keys(path: &Path) -> Result<(shoaldb::security::Enrolment, shoaldb::security::Identity), CloudError> {
    let store = shoaldb::Store::open(path).map_err(|e| CloudError::Keys(format!("{}: {e}", path.display())))?;
    let enrolment = shoaldb::enrolment::load(&store)
        .map_err(|e| CloudError::Keys(format!("{}: {e}", path.display())))?
        .ok_or_else(|| CloudError::Keys(format!("{} holds no certificate (enrol it first)", path.display())))?;
    let identity =
        shoaldb::node::device_identity(&store).map_err(|e| CloudError::Keys(format!("{}: {e}", path.display())))?;
    Ok((enrolment, identity))
}

/// SIGINT or SIGTERM.
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
