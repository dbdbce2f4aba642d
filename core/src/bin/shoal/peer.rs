//! `shoal peer`: run a store as a node on the LAN (and, with feature `bluetooth-linux`, over Bluetooth LE through
//! BlueZ) until SIGINT or SIGTERM.

use crate::{usage, CliError};
use shoaldb::node::{Node, NodeConfig};
use shoaldb::security::{Access, AppSecret};
use shoaldb::sync::Subscription;
use shoaldb::StoreKey;
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

/// What `shoal peer` was asked to do.
struct PeerArgs {
    /// `--secret-file`: development mode; `None`: the installed certificate.
    secret_file: Option<PathBuf>,
    name: Option<String>,
    listen: Option<SocketAddr>,
    connect: Vec<SocketAddr>,
    /// `--cloud URL`: relays of the cloud to dial over WebSocket.
    cloud: Vec<String>,
    /// `--cloud-ca FILE`: certificate authorities (PEM) trusted for `wss://` besides Mozilla's.
    cloud_trust: Vec<String>,
    mdns: bool,
    subscriptions: Vec<Subscription>,
    /// `--ble ADAPTER`: also sync over Bluetooth LE on this BlueZ adapter.
    ble: Option<String>,
    /// `--ble-allow ADDR`: the only peer addresses dialled or accepted over Bluetooth.
    ble_allow: Vec<String>,
    /// `--ble-gatt` (false) / `--ble-l2cap` (true, the default): the channel opened as a central.
    ble_l2cap: bool,
}

fn parse(args: &[String]) -> Result<PeerArgs, CliError> {
    let mut secret_file = None;
    let mut parsed = PeerArgs {
        secret_file: None,
        name: None,
        listen: None,
        connect: Vec::new(),
        cloud: Vec::new(),
        cloud_trust: Vec::new(),
        mdns: true,
        subscriptions: Vec::new(),
        ble: None,
        ble_allow: Vec::new(),
        ble_l2cap: true,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || -> Result<String, CliError> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it.next().cloned().ok_or_else(|| usage(format!("{flag} needs a value"))),
            }
        };
        match flag {
            "--secret-file" => secret_file = Some(PathBuf::from(value()?)),
            "--name" => parsed.name = Some(value()?),
            "--listen" => parsed.listen = Some(resolve(&value()?)?),
            "--connect" => parsed.connect.push(resolve(&value()?)?),
            "--cloud" => parsed.cloud.push(value()?),
            "--cloud-ca" => {
                let file = value()?;
                let pem = std::fs::read_to_string(&file).map_err(|e| usage(format!("--cloud-ca {file}: {e}")))?;
                parsed.cloud_trust.push(pem);
            }
            "--no-mdns" if inline.is_none() => parsed.mdns = false,
            "--subscribe" => {
                let s = value()?;
                parsed.subscriptions.push(Subscription::parse(&s).map_err(|e| usage(format!("--subscribe {s}: {e}")))?);
            }
            "--ble" => parsed.ble = Some(value()?),
            "--ble-allow" => {
                let a = value()?;
                if !is_bluetooth_address(&a) {
                    return Err(usage(format!("--ble-allow {a}: not a Bluetooth address (AA:BB:CC:DD:EE:FF)")));
                }
                parsed.ble_allow.push(a.to_ascii_uppercase());
            }
            "--ble-l2cap" if inline.is_none() => parsed.ble_l2cap = true,
            "--ble-gatt" if inline.is_none() => parsed.ble_l2cap = false,
            other => return Err(usage(format!("peer: unknown argument {other}"))),
        }
    }
    parsed.secret_file = secret_file;
    if parsed.ble.is_none() && !parsed.ble_allow.is_empty() {
        return Err(usage("--ble-allow needs --ble ADAPTER"));
    }
    if parsed.ble.is_some() && !cfg!(feature = "bluetooth-linux") {
        return Err(usage("--ble: this shoal was built without Bluetooth (cargo feature bluetooth-linux)"));
    }
    if parsed.subscriptions.is_empty() {
        parsed.subscriptions.push(Subscription::everything());
    }
    Ok(parsed)
}

/// Whether `s` looks like `AA:BB:CC:DD:EE:FF`.
fn is_bluetooth_address(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Adds the Bluetooth radio `--ble` asked for.
#[cfg(feature = "bluetooth-linux")]
fn with_bluetooth(config: NodeConfig, args: &PeerArgs) -> Result<NodeConfig, CliError> {
    use shoaldb::transport::ble::bluez::{BluezConfig, BluezRadio, ChannelChoice};
    let Some(adapter) = &args.ble else { return Ok(config) };
    let channel = if args.ble_l2cap { ChannelChoice::PreferL2cap } else { ChannelChoice::Gatt };
    let radio = BluezRadio::new(BluezConfig::new(adapter.clone()).allow(args.ble_allow.clone()).channel(channel));
    Ok(config.with_ble(radio))
}

/// Without the feature there is no radio (`parse` refuses `--ble`).
#[cfg(not(feature = "bluetooth-linux"))]
fn with_bluetooth(config: NodeConfig, _args: &PeerArgs) -> Result<NodeConfig, CliError> {
    Ok(config)
}

/// `HOST:PORT` as a socket address (host names are resolved; IPv4 preferred).
fn resolve(s: &str) -> Result<SocketAddr, CliError> {
    if let Ok(addr) = s.parse() {
        return Ok(addr);
    }
    let addrs: Vec<SocketAddr> = s.to_socket_addrs().map_err(|e| usage(format!("bad address {s}: {e}")))?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| usage(format!("{s} resolves to no address")))
}

/// The app secret: the file's bytes without a trailing newline.
fn read_secret(path: &Path) -> Result<AppSecret, CliError> {
    let mut bytes = std::fs::read(path)
        .map_err(|e| CliError::Failed(format!("cannot read the secret file {}: {e}", path.display())))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    AppSecret::from_bytes(&bytes).map_err(|e| CliError::Failed(format!("secret file {}: {e}", path.display())))
}

/// A default device name: the host's name.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "shoal".to_string())
}

/// Run the peer until a signal.
pub fn run(db: &Path, key: Option<StoreKey>, args: &[String]) -> Result<(), CliError> {
    let args = parse(args)?;
    let store = crate::open(db, key)?;
    let access: Access = match &args.secret_file {
        Some(file) => {
            log::warn!("development mode: every device holding the shared secret is trusted with everything");
            read_secret(file)?.into()
        }
        None => shoaldb::enrolment::load(&store)
            .map_err(|e| CliError::Failed(format!("the installed certificate: {e}")))?
            .ok_or_else(|| {
                usage("peer needs --secret-file F (development mode) or an installed certificate (shoal enrol install)")
            })?
            .into(),
    };
    let mut config = NodeConfig::new(args.name.clone().unwrap_or_else(host_name), access)
        .with_mdns(args.mdns)
        .with_subscriptions(args.subscriptions.clone());
    config.listen = args.listen;
    config.connect = args.connect.clone();
    config.cloud = args.cloud.clone();
    config.cloud_trust = args.cloud_trust.clone();
    let config = with_bluetooth(config, &args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        // Signals first, so that a signal sent right after the "listening" line is handled.
        let signals = Signals::new()?;
        let node = Node::start(store, config).await.map_err(|e| CliError::Failed(e.to_string()))?;
        let line = match node.listen_addr() {
            Some(addr) => format!("listening on {addr} as {}", node.device_key()),
            None => format!("running as {} (not listening)", node.device_key()),
        };
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            out.flush()?;
        }
        let signal = signals.wait().await;
        log::info!("{signal}: shutting down");
        node.shutdown().await;
        Ok(())
    })
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere).
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, CliError> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let failed = |e: std::io::Error| CliError::Failed(format!("cannot handle signals: {e}"));
            Ok(Signals {
                term: signal(SignalKind::terminate()).map_err(failed)?,
                int: signal(SignalKind::interrupt()).map_err(failed)?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn wait(mut self) -> &'static str {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => "SIGTERM",
                _ = self.int.recv() => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        }
    }
}
