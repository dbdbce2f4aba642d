//! `shoal-cloud`: run one relay of Shoal's cloud peer.

use shoaldb::security::AppSecret;
use shoaldb_cloud::{Relay, RelayConfig};
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

const USAGE: &str = "\
usage:
  shoal-cloud --postgres URL --listen HOST:PORT --secret-file F [--name NAME] [--connections N]
      run a relay of the cloud peer on the PostgreSQL database URL (e.g. postgres://shoal@127.0.0.1/shoal;
      its schema is created or migrated first), accepting devices on HOST:PORT, in development mode (devices
      holding the app secret in F); until SIGINT/SIGTERM, which close every link cleanly first.
      Any number of relays may serve one database.
logging: JSON lines on stderr; SHOAL_LOG=off|error|warn|info|debug|trace (default info).
exit codes: 0 stopped cleanly, 1 failure, 64 bad usage.";

struct Args {
    postgres: String,
    listen: SocketAddr,
    secret: AppSecret,
    name: Option<String>,
    connections: Option<u32>,
}

fn usage(msg: &str) -> ExitCode {
    eprintln!("shoal-cloud: {msg}\n{USAGE}");
    ExitCode::from(64)
}

fn parse(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut postgres, mut listen, mut secret, mut name, mut connections) = (None, None, None, None, None);
    while let Some(flag) = argv.next() {
        let mut value = || argv.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--postgres" => postgres = Some(value()?),
            "--listen" => listen = Some(value()?.parse::<SocketAddr>().map_err(|e| format!("--listen: {e}"))?),
            "--secret-file" => secret = Some(read_secret(Path::new(&value()?))?),
            "--name" => name = Some(value()?),
            "--connections" => connections = Some(value()?.parse::<u32>().map_err(|e| format!("--connections: {e}"))?),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        postgres: postgres.ok_or("--postgres is required")?,
        listen: listen.ok_or("--listen is required")?,
        secret: secret.ok_or("--secret-file is required (development mode)")?,
        name,
        connections,
    })
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
        let mut config = RelayConfig::new(args.postgres, args.listen, args.secret);
        if let Some(name) = args.name {
            config.name = name;
        }
        if let Some(n) = args.connections {
            config.connections = n;
        }
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
        wait_for_signal().await;
        log::info!("stopping: closing every link");
        relay.shutdown().await;
        ExitCode::SUCCESS
    })
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
