//! The store object: open/close, atomic writes, attachments, and sync (start/stop, subscriptions, presence).

use crate::callbacks::{report, AttachmentProgress, ObserverHandle, PresenceObserver};
use crate::cancel::{self, join_error, Cancellation, Check};
use crate::collection::Collection;
use crate::error::{guard, ShoalError};
use crate::values::{fields_value, invalid, AttachmentToken, Prepared, WriteOp};
use crate::vault::KeyVault;
use shoaldb::security::{Access, AppSecret};
use shoaldb::sync::{Subscription, TransportKind};
use shoaldb::util::{lock, read, write};
use shoaldb::{Node, NodeConfig};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::runtime::{Handle, Runtime};
use tokio::sync::watch;

/// How a store opens.
#[derive(Clone, uniffi::Record)]
pub struct StoreConfig {
    /// The database file (created if missing). It holds no private key (see `keyVault`), so it may be backed up;
    /// a phone app usually keeps it out of backups all the same (Android: `ShoalAndroid.databasePath`, in
    /// `Context.getNoBackupFilesDir()`; Apple: `Shoal.databasePath`, a directory marked `isExcludedFromBackup`) and
    /// lets sync, not backup, restore its data.
    pub path: String,
    /// This device's name, shown to the other devices (e.g. "Ana's phone").
    pub device_name: String,
    /// **Development mode**: a secret every device of the app shares; only devices holding it can sync with each
    /// other, and each of them is trusted with everything (anyone who unpacks the app can join). Any length (it is
    /// stretched into a key). Used only while no certificate is installed: once `Store.installCertificate` has
    /// installed one, sync proves this device with its certificate and checks every peer's instead (a shipping
    /// app enrols its devices so). `null`/`nil`: no development mode, so `startSync` needs a certificate.
    #[uniffi(default)]
    pub app_secret: Option<String>,
    /// How this device syncs (used by `startSync`).
    #[uniffi(default)]
    pub sync: SyncConfig,
    /// The key that encrypts the database file (SQLCipher: its pages, WAL and attachments), exactly 32 random
    /// bytes; `null`/`nil` (the default): not encrypted. Needs a library built with the cargo feature `encryption`
    /// (`ShoalError.Storage` otherwise: a store is never left unencrypted when a key was given). An encrypted store
    /// opens with its key only: a wrong key, or none, fails with `WrongKey` and changes nothing.
    ///
    /// Generate the key once (a secure random generator) and keep it only in the platform's keystore, never beside
    /// the database nor in a backup:
    /// - Android: encrypted by an AES key of the Android Keystore (`KeyGenParameterSpec`, purpose encrypt/decrypt,
    ///   AES-GCM), the wrapped bytes in the app's no-backup storage (or `EncryptedSharedPreferences` excluded from
    ///   Auto Backup). Keystore keys never leave the device, so a restored backup cannot unwrap it.
    /// - iOS: a Keychain item (`kSecClassGenericPassword`) with `kSecAttrAccessibleAfterFirstUnlockThisDeviceOnly`
    ///   — "ThisDeviceOnly" keeps it out of backups and off other devices; "AfterFirstUnlock" lets sync run in the
    ///   background while the phone is locked.
    ///
    /// A store restored from a backup without its key cannot be opened: delete it and sync again from the other
    /// devices.
    #[uniffi(default)]
    pub key: Option<Vec<u8>>,
    /// Where this device's private keys are kept (see `KeyVault`): Android `AndroidKeystoreVault`, iOS
    /// `KeychainVault`. `null`/`nil` (the default): files in the directory `<path>-keys` beside the database,
    /// readable by the app only — right for desktops and tests; on a phone that directory must be left out of
    /// backups, so pass the platform's vault.
    #[uniffi(default)]
    pub key_vault: Option<Arc<dyn KeyVault>>,
}

/// Encrypt the unencrypted store at `path` in place with `key` (32 bytes; see `StoreConfig.key`), for an app that
/// turns encryption on for stores it created before: open it with that key from then on. The store must be closed
/// (`Storage` error when it is open). An app that sees `InvalidArgument` from `Store.open` with a key (the store is
/// not encrypted) calls this, then opens it again. Needs a library built with the cargo feature `encryption`.
#[uniffi::export]
pub fn encrypt_store_file(path: String, key: Vec<u8>) -> Result<(), ShoalError> {
    guard(|| {
        let key = shoaldb::StoreKey::from_slice(&key)
            .map_err(|_| invalid(format!("the store key is {} bytes, not 32", key.len())))?;
        Ok(shoaldb::Store::encrypt_file(&path, &key)?)
    })
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("path", &self.path)
            .field("device_name", &self.device_name)
            .field("app_secret", &self.app_secret.as_ref().map(|_| ".."))
            .field("sync", &self.sync)
            .field("key", &self.key.as_ref().map(|_| ".."))
            .field("key_vault", &self.key_vault.as_ref().map(|_| ".."))
            .finish()
    }
}

/// How a device finds and connects to the others.
#[derive(Clone, Debug, PartialEq, uniffi::Record)]
pub struct SyncConfig {
    /// Where to accept connections, `IP:port` (port 0: any free port). `None`: nowhere, unless `mdns` is on,
    /// which listens on every interface.
    #[uniffi(default)]
    pub listen: Option<String>,
    /// Advertise and discover devices of the same app on the local network (mDNS / Bonjour).
    #[uniffi(default = true)]
    pub mdns: bool,
    /// Addresses (`IP:port`) to dial, and dial again whenever the link is lost.
    #[uniffi(default)]
    pub peers: Vec<String>,
    /// What this device wants: `"tasks"` (a whole collection), `"tasks:done == false"` (a filter) or `"*"`.
    /// `None`: everything.
    #[uniffi(default)]
    pub subscriptions: Option<Vec<String>>,
    /// The cloud's relays to dial over WebSocket (`wss://relay.example.com/sync` through a load balancer that
    /// terminates HTTPS, or `ws://…`), and dial again whenever the link is lost: the device syncs through the cloud
    /// whenever it reaches it, beside the local network and Bluetooth.
    #[uniffi(default)]
    pub cloud: Vec<String>,
    /// Certificate authorities (PEM) trusted for `wss://` besides Mozilla's: an organisation's private one.
    #[uniffi(default)]
    pub cloud_trust: Vec<String>,
}

impl Default for SyncConfig {
    fn default() -> SyncConfig {
        SyncConfig {
            listen: None,
            mdns: true,
            peers: Vec::new(),
            subscriptions: None,
            cloud: Vec::new(),
            cloud_trust: Vec::new(),
        }
    }
}

/// How a device is reached (the first hop).
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum Transport {
    /// The local network (TCP).
    Lan,
    /// Bluetooth LE.
    Bluetooth,
    /// The cloud's relays, over the internet (`SyncConfig.cloud`).
    Cloud,
}

/// A device this device can reach, directly or through others.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Peer {
    /// The device's stable id (its public key, 64 hex digits).
    pub device_id: String,
    /// The name the device gave itself.
    pub name: String,
    /// 1 when directly connected, more through other devices.
    pub hops: u32,
    /// How the first hop is made (for a direct link, the transport carrying the data).
    pub transport: Transport,
    /// Every transport linking this device directly to it, preferred first (empty when reached through others).
    /// When both the LAN and Bluetooth link them, the LAN carries the data and Bluetooth stands by.
    pub direct: Vec<Transport>,
}

/// One device's database. Open it once per file and keep it for the app's lifetime. `shutdown()` stops sync and
/// closes it, waiting for both; freeing the object (Kotlin: `close()` or `use {}`, it is `AutoCloseable`; Swift: the
/// last reference going away) does the same in the background. Its collections stop working with it.
#[derive(uniffi::Object)]
pub struct Store {
    open: RwLock<Option<Arc<Open>>>,
}

/// An open store: the core store, its runtime and the sync node when started.
pub(crate) struct Open {
    pub(crate) store: shoaldb::Store,
    name: String,
    /// The development-mode secret, used while no certificate is installed.
    secret: Option<AppSecret>,
    device_id: String,
    sync: Mutex<SyncConfig>,
    runtime: Mutex<Option<Runtime>>,
    handle: Handle,
    /// Serializes starting and stopping sync.
    lifecycle: tokio::sync::Mutex<()>,
    node: Mutex<Option<Node>>,
    presence: watch::Sender<Vec<Peer>>,
    bluetooth: Mutex<Option<Arc<dyn crate::bluetooth::BluetoothRadio>>>,
    discovery: Mutex<Option<Arc<dyn crate::discovery::LocalNetworkDiscovery>>>,
}

fn parse_addr(s: &str) -> Result<SocketAddr, ShoalError> {
    s.trim().parse().map_err(|_| invalid(format!("{s:?} is not an address of the form IP:port")))
}

fn parse_subscriptions(subs: &[String]) -> Result<Vec<Subscription>, ShoalError> {
    subs.iter().map(|s| Subscription::parse(s).map_err(|e| invalid(format!("subscription {s:?}: {e}")))).collect()
}

fn meta_map(meta: HashMap<String, String>) -> BTreeMap<String, String> {
    meta.into_iter().collect()
}

impl Open {
    /// What this device wants from the others (`SyncConfig.subscriptions`; everything when not set).
    pub(crate) fn subscriptions(&self) -> Result<Vec<Subscription>, ShoalError> {
        match &lock(&self.sync).subscriptions {
            Some(subs) => parse_subscriptions(subs),
            None => Ok(vec![Subscription::everything()]),
        }
    }

    /// Runs blocking store work `f` on the runtime's blocking pool; it stops when its caller gives up (see
    /// [`crate::cancel`]).
    pub(crate) async fn background<T: Send + 'static>(
        &self,
        cancel: Option<Arc<Cancellation>>,
        f: impl FnOnce(&Check) -> Result<T, ShoalError> + Send + 'static,
    ) -> Result<T, ShoalError> {
        cancel::blocking(&self.handle, cancel, f).await
    }

    /// Runs `f` on the store's runtime and waits for it from any executor (the foreign caller's). `f` runs to its
    /// end even if the caller gives up (starting and stopping sync must not stop half-way).
    pub(crate) async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl Future<Output = Result<T, ShoalError>> + Send + 'static,
    ) -> Result<T, ShoalError> {
        self.handle.spawn(f).await.map_err(join_error)?
    }

    /// Runs blocking store work on the runtime's blocking pool (not started if the caller gives up first).
    pub(crate) async fn run_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> Result<T, ShoalError> + Send + 'static,
    ) -> Result<T, ShoalError> {
        self.background(None, move |_| f()).await
    }

    fn node(&self) -> Option<Node> {
        lock(&self.node).clone()
    }

    async fn start(self: Arc<Self>) -> Result<(), ShoalError> {
        let _serial = self.lifecycle.lock().await;
        self.start_locked().await
    }

    /// Restarts sync if it is running, so that it picks up a certificate or revocation list installed since.
    pub(crate) async fn restart(self: Arc<Self>) -> Result<(), ShoalError> {
        let _serial = self.lifecycle.lock().await;
        if self.node().is_none() {
            return Ok(());
        }
        log::info!("restarting sync for {} with the credentials installed", self.name);
        self.stop_locked().await;
        self.start_locked().await
    }

    /// Starts sync; the caller holds `lifecycle`.
    async fn start_locked(&self) -> Result<(), ShoalError> {
        if self.node().is_some() {
            return Ok(());
        }
        let sync = lock(&self.sync).clone();
        let mut config = NodeConfig::new(self.name.clone(), self.access()?).with_mdns(sync.mdns);
        if let Some(listen) = &sync.listen {
            config = config.listen_on(parse_addr(listen)?);
        }
        for peer in &sync.peers {
            config = config.connect_to(parse_addr(peer)?);
        }
        for pem in &sync.cloud_trust {
            config = config.trust_cloud_certificate(pem.clone());
        }
        for url in &sync.cloud {
            config = config.connect_to_cloud(url.clone());
        }
        if let Some(subs) = &sync.subscriptions {
            config = config.with_subscriptions(parse_subscriptions(subs)?);
        }
        if let Some(discovery) = lock(&self.discovery).clone().filter(|_| sync.mdns) {
            config = config.with_service_discovery(Arc::new(crate::discovery::ForeignDiscovery(discovery)));
        }
        if let Some(radio) = lock(&self.bluetooth).clone() {
            config = config.with_ble(Arc::new(crate::bluetooth::ForeignRadio::new(radio)));
        }
        let node = Node::start(self.store.clone(), config).await?;
        let mut source = node.presence();
        let sink = self.presence.clone();
        tokio::spawn(async move {
            loop {
                let peers = source.borrow_and_update().iter().map(peer_of).collect();
                sink.send_replace(peers);
                if source.changed().await.is_err() {
                    sink.send_replace(Vec::new());
                    break;
                }
            }
        });
        log::info!("sync started for {} ({})", self.name, self.device_id);
        *lock(&self.node) = Some(node);
        Ok(())
    }

    /// How sync proves this device and checks the others: the installed certificate if there is one, otherwise
    /// the app secret (development mode).
    fn access(&self) -> Result<Access, ShoalError> {
        if let Some(enrolled) = shoaldb::enrolment::load(&self.store)? {
            return Ok(enrolled.into());
        }
        match &self.secret {
            Some(secret) => {
                log::warn!("development mode: every device holding the app secret is trusted with everything");
                Ok(secret.clone().into())
            }
            None => Err(ShoalError::Certificate(
                "no certificate is installed (installCertificate) and no app secret was given (development mode)"
                    .into(),
            )),
        }
    }

    async fn stop(self: Arc<Self>) {
        let _serial = self.lifecycle.lock().await;
        self.stop_locked().await;
    }

    /// Stops sync; the caller holds `lifecycle`.
    async fn stop_locked(&self) {
        let node = lock(&self.node).take();
        if let Some(node) = node {
            node.shutdown().await;
            self.presence.send_replace(Vec::new());
        }
    }

    /// Stops sync and the runtime. `wait`: block until both are done (close); otherwise let them finish in the
    /// background (drop).
    fn shut_down(&self, wait: bool) {
        let Some(runtime) = lock(&self.runtime).take() else { return };
        let node = lock(&self.node).take();
        let worker = std::thread::Builder::new().name("shoal-close".into()).spawn(move || {
            if let Some(node) = node {
                runtime.block_on(node.shutdown());
            }
            runtime.shutdown_timeout(Duration::from_secs(2));
        });
        match worker {
            Ok(w) if wait => {
                let _ = w.join();
            }
            Ok(_) => {}
            Err(e) => log::error!("could not stop the store's runtime: {e}"),
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.shut_down(false);
    }
}

fn transport_of(t: TransportKind) -> Transport {
    match t {
        TransportKind::Lan => Transport::Lan,
        TransportKind::Ble => Transport::Bluetooth,
        TransportKind::Cloud => Transport::Cloud,
    }
}

fn peer_of(p: &shoaldb::sync::PeerPresence) -> Peer {
    Peer {
        device_id: p.device.to_hex(),
        name: p.name.clone(),
        hops: p.hops,
        transport: transport_of(p.transport),
        direct: p.direct.iter().copied().map(transport_of).collect(),
    }
}

impl Store {
    pub(crate) fn get(&self) -> Result<Arc<Open>, ShoalError> {
        read(&self.open).clone().ok_or(ShoalError::Closed)
    }
}

#[uniffi::export]
impl Store {
    /// Open (or create) the store described by `config`. Sync does not start until `startSync`. Opening reads the
    /// file (and migrates an older one), so it runs on a thread of its own, never the caller's.
    #[uniffi::constructor]
    pub async fn open(config: StoreConfig) -> Result<Arc<Store>, ShoalError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("shoal-open".into())
            .spawn(move || {
                let _ = tx.send(Store::open_blocking(config));
            })
            .map_err(|e| ShoalError::Storage(format!("could not start a thread to open the store: {e}")))?;
        rx.await.map_err(|_| ShoalError::Internal("the thread opening the store ended without an answer".into()))?
    }

    /// Like `open`, on the calling thread (blocking it until done): for background threads only.
    #[uniffi::constructor]
    pub fn open_blocking(config: StoreConfig) -> Result<Arc<Store>, ShoalError> {
        guard(|| {
            let secret = match &config.app_secret {
                Some(secret) => {
                    Some(AppSecret::from_bytes(secret.as_bytes()).map_err(|e| invalid(format!("app secret: {e}")))?)
                }
                None => None,
            };
            if config.device_name.trim().is_empty() {
                return Err(invalid("the device name is empty"));
            }
            // Checked now, not at startSync, so a mistake shows where it was made.
            if let Some(listen) = &config.sync.listen {
                parse_addr(listen)?;
            }
            for peer in &config.sync.peers {
                parse_addr(peer)?;
            }
            if let Some(subs) = &config.sync.subscriptions {
                parse_subscriptions(subs)?;
            }
            let key = match &config.key {
                Some(bytes) => Some(
                    shoaldb::StoreKey::from_slice(bytes)
                        .map_err(|_| invalid(format!("the store key is {} bytes, not 32", bytes.len())))?,
                ),
                None => None,
            };
            let keys = config
                .key_vault
                .clone()
                .map(|vault| Arc::new(crate::vault::ForeignVault(vault)) as Arc<dyn shoaldb::security::KeyVault>);
            let store = shoaldb::Store::open_with(&config.path, shoaldb::Options { key, keys, ..Default::default() })?;
            let device_id = shoaldb::node::device_identity(&store)?.device_key().to_hex();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("shoal")
                .enable_all()
                .build()
                .map_err(|e| ShoalError::Storage(format!("could not start the store's threads: {e}")))?;
            let handle = runtime.handle().clone();
            let open = Open {
                store,
                name: config.device_name,
                secret,
                device_id,
                sync: Mutex::new(config.sync),
                runtime: Mutex::new(Some(runtime)),
                handle,
                lifecycle: tokio::sync::Mutex::new(()),
                node: Mutex::new(None),
                presence: watch::channel(Vec::new()).0,
                bluetooth: Mutex::new(None),
                discovery: Mutex::new(None),
            };
            log::debug!("opened store {}", config.path);
            Ok(Arc::new(Store { open: RwLock::new(Some(Arc::new(open))) }))
        })
    }

    /// Stop sync and close the store, waiting for both. Every later call fails with `ShoalError.Closed`; calling it again does
    /// nothing.
    pub fn shutdown(&self) {
        let open = write(&self.open).take();
        if let Some(open) = open {
            open.shut_down(true);
        }
    }

    /// The collection named `name` (any non-empty text of at most 512 bytes without control characters; it exists
    /// once it has a document).
    pub fn collection(self: Arc<Self>, name: String) -> Result<Arc<Collection>, ShoalError> {
        guard(|| {
            self.get()?;
            shoaldb::store::check_collection(&name)?;
            Ok(Arc::new(Collection::new(&self, name)))
        })
    }

    /// The names of the collections that have documents.
    #[uniffi::method(default(cancel = None))]
    pub async fn collections(self: Arc<Self>, cancel: Option<Arc<Cancellation>>) -> Result<Vec<String>, ShoalError> {
        self.get()?.background(cancel, move |_| self.collections_blocking()).await
    }

    /// Like `collections`, on the calling thread (blocking it until done): for background threads only.
    pub fn collections_blocking(&self) -> Result<Vec<String>, ShoalError> {
        guard(|| Ok(self.get()?.store.collections()?))
    }

    /// Re-encrypt the store under `new_key` (32 bytes; see `StoreConfig.key`): from then on only it opens the
    /// store. Fails with `InvalidArgument` on a store opened without a key. Takes time in proportion to the file's
    /// size. Store `new_key` in the keystore before calling this, and drop the old one after it returns.
    pub async fn change_key(&self, new_key: Vec<u8>) -> Result<(), ShoalError> {
        let open = self.get()?;
        let store = open.store.clone();
        open.run_blocking(move || {
            let key = shoaldb::StoreKey::from_slice(&new_key)
                .map_err(|_| invalid(format!("the store key is {} bytes, not 32", new_key.len())))?;
            Ok(store.change_key(&key)?)
        })
        .await
    }

    /// This device's stable id (its public key, 64 hex digits), as other devices see it in `peers`.
    pub fn device_id(&self) -> Result<String, ShoalError> {
        Ok(self.get()?.device_id.clone())
    }

    /// Apply `ops` atomically: all commit together or none does. Returns the id of each op's document. A
    /// cancelled call stops between two ops and commits none.
    #[uniffi::method(default(cancel = None))]
    pub async fn write(&self, ops: Vec<WriteOp>, cancel: Option<Arc<Cancellation>>) -> Result<Vec<String>, ShoalError> {
        let open = self.get()?;
        let store = open.store.clone();
        open.background(cancel, move |check| {
            let mut prepared = Vec::with_capacity(ops.len());
            for op in ops {
                prepared.push(PreparedOp::new(op)?);
            }
            Ok(store.write(|txn| {
                prepared
                    .into_iter()
                    .map(|op| {
                        check.go_on_core()?;
                        op.apply(txn)
                    })
                    .collect::<shoaldb::Result<Vec<_>>>()
            })?)
        })
        .await
    }

    // ---- attachments ----

    /// Store `bytes` as an attachment and return its token (put it in a field with `FieldValue.Attachment`).
    /// Storing the same bytes twice stores them once.
    #[uniffi::method(default(cancel = None))]
    pub async fn put_attachment(
        self: Arc<Self>,
        bytes: Vec<u8>,
        meta: HashMap<String, String>,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<AttachmentToken, ShoalError> {
        self.get()?.background(cancel, move |_| self.put_attachment_blocking(bytes, meta)).await
    }

    /// Like `putAttachment`, on the calling thread (blocking it until done): for background threads only.
    pub fn put_attachment_blocking(
        &self,
        bytes: Vec<u8>,
        meta: HashMap<String, String>,
    ) -> Result<AttachmentToken, ShoalError> {
        guard(|| Ok(AttachmentToken::from_core(&self.get()?.store.put_attachment_bytes(&bytes, meta_map(meta))?)))
    }

    /// Store the file at `path` as an attachment, streaming it (any size). A cancelled call stops reading and
    /// stores nothing.
    #[uniffi::method(default(cancel = None))]
    pub async fn put_attachment_file(
        &self,
        path: String,
        meta: HashMap<String, String>,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<AttachmentToken, ShoalError> {
        let open = self.get()?;
        let store = open.store.clone();
        open.background(cancel, move |check| {
            let file = std::fs::File::open(&path).map_err(|e| invalid(format!("cannot read {path}: {e}")))?;
            match store.put_attachment(std::io::BufReader::new(check.reader(file)), meta_map(meta)) {
                Ok(token) => Ok(AttachmentToken::from_core(&token)),
                Err(e) => {
                    // Stopped by the cancelled reader, or failed on its own: say which.
                    check.go_on()?;
                    Err(e.into())
                }
            }
        })
        .await
    }

    /// Whether the attachment's bytes are on this device.
    #[uniffi::method(default(cancel = None))]
    pub async fn has_attachment(
        self: Arc<Self>,
        token: AttachmentToken,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<bool, ShoalError> {
        self.get()?.background(cancel, move |_| self.has_attachment_blocking(token)).await
    }

    /// Like `hasAttachment`, on the calling thread (blocking it until done): for background threads only.
    pub fn has_attachment_blocking(&self, token: AttachmentToken) -> Result<bool, ShoalError> {
        guard(|| Ok(self.get()?.store.has_attachment(&token.into_core()?)?))
    }

    /// The attachment's bytes, if they are on this device (`ShoalError.NotFound` otherwise: fetch it first).
    #[uniffi::method(default(cancel = None))]
    pub async fn attachment_bytes(
        self: Arc<Self>,
        token: AttachmentToken,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<Vec<u8>, ShoalError> {
        self.get()?.background(cancel, move |_| self.attachment_bytes_blocking(token)).await
    }

    /// Like `attachmentBytes`, on the calling thread (blocking it until done): for background threads only.
    pub fn attachment_bytes_blocking(&self, token: AttachmentToken) -> Result<Vec<u8>, ShoalError> {
        guard(|| Ok(self.get()?.store.attachment_bytes(&token.into_core()?)?))
    }

    /// Write the attachment's bytes (verified against the hash) to the file at `path`, replacing it. A cancelled
    /// call leaves `path` as it was.
    #[uniffi::method(default(cancel = None))]
    pub async fn save_attachment(
        &self,
        token: AttachmentToken,
        path: String,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<(), ShoalError> {
        let open = self.get()?;
        let store = open.store.clone();
        open.background(cancel, move |check| {
            let mut reader = check.reader(store.open_attachment(&token.into_core()?)?);
            let tmp = format!("{path}.shoal-partial");
            let io = |e: std::io::Error| ShoalError::Storage(format!("cannot write {path}: {e}"));
            let written = (|| {
                let mut out = std::fs::File::create(&tmp)?;
                std::io::copy(&mut reader, &mut out)?;
                out.sync_all()
            })();
            if let Err(e) = written {
                let _ = std::fs::remove_file(&tmp);
                check.go_on()?;
                return Err(io(e));
            }
            std::fs::rename(&tmp, &path).map_err(io)?;
            Ok(())
        })
        .await
    }

    /// Fetch the attachment's bytes from the devices in reach (directly or through others), reporting progress.
    /// Returns at once if they are already here. Needs sync to be running; fails with
    /// `ShoalError.AttachmentUnavailable` when no reachable device has them. A cancelled fetch stops asking for the
    /// bytes; those received so far stay for a while, so fetching again resumes from them.
    #[uniffi::method(default(cancel = None))]
    pub async fn fetch_attachment(
        &self,
        token: AttachmentToken,
        progress: Option<Arc<dyn AttachmentProgress>>,
        cancel: Option<Arc<Cancellation>>,
    ) -> Result<(), ShoalError> {
        let open = self.get()?;
        let token = token.into_core()?;
        if open.store.has_attachment(&token)? {
            if let Some(p) = &progress {
                report("attachment progress", p.on_progress(token.len, token.len));
            }
            return Ok(());
        }
        let node = open.node().ok_or_else(|| ShoalError::Sync("sync is not running: call startSync first".into()))?;
        cancel::spawned(&open.handle, cancel, async move {
            node.fetch_attachment(&token, move |done, total| {
                if let Some(p) = &progress {
                    report("attachment progress", p.on_progress(done, total));
                }
            })
            .await?;
            Ok(())
        })
        .await
    }

    // ---- sync ----

    /// Start syncing with the configured settings: listen, discover (mDNS) and dial. Does nothing if running.
    pub async fn start_sync(&self) -> Result<(), ShoalError> {
        let open = self.get()?;
        open.clone().run(open.start()).await
    }

    /// Stop syncing: close every link cleanly. The store stays open; `startSync` starts again.
    pub async fn stop_sync(&self) -> Result<(), ShoalError> {
        let open = self.get()?;
        open.clone()
            .run(async move {
                open.stop().await;
                Ok(())
            })
            .await
    }

    /// Whether sync is running.
    pub fn is_syncing(&self) -> bool {
        self.get().map(|o| o.node().is_some()).unwrap_or(false)
    }

    /// The address other devices can dial (`IP:port`), while sync is running and listening.
    pub fn listen_address(&self) -> Option<String> {
        self.get().ok()?.node()?.listen_addr().map(|a| a.to_string())
    }

    /// Dial `address` (`IP:port`) now if sync is running, and on every later start; it is dialled again whenever
    /// the link is lost.
    pub fn connect(&self, address: String) -> Result<(), ShoalError> {
        guard(|| {
            let open = self.get()?;
            let addr = parse_addr(&address)?;
            lock(&open.sync).peers.push(address);
            if let Some(node) = open.node() {
                let _rt = open.handle.enter();
                node.connect(addr);
            }
            Ok(())
        })
    }

    /// Sync over Bluetooth LE too, through the platform's `radio` (or stop using one: `None`), from the next
    /// `startSync`. Phones in range then sync with no network at all, hop by hop; when two phones also share a
    /// LAN, the LAN carries the data and Bluetooth stands by.
    pub fn set_bluetooth(&self, radio: Option<Arc<dyn crate::bluetooth::BluetoothRadio>>) -> Result<(), ShoalError> {
        *lock(&self.get()?.bluetooth) = radio;
        Ok(())
    }

    /// Advertise and discover devices on the local network through the platform's `discovery` (or go back to
    /// the built-in mDNS: `None`), from the next `startSync`, while `SyncConfig.mdns` is on. iOS apps pass the
    /// Swift package's `BonjourDiscovery`: the built-in mDNS needs raw multicast sockets, which iOS allows only
    /// with Apple's managed multicast entitlement.
    pub fn set_local_network_discovery(
        &self,
        discovery: Option<Arc<dyn crate::discovery::LocalNetworkDiscovery>>,
    ) -> Result<(), ShoalError> {
        *lock(&self.get()?.discovery) = discovery;
        Ok(())
    }

    /// Replace what this device wants from the others (see `SyncConfig.subscriptions`); takes effect at once.
    pub fn set_subscriptions(&self, subscriptions: Vec<String>) -> Result<(), ShoalError> {
        guard(|| {
            let open = self.get()?;
            let parsed = parse_subscriptions(&subscriptions)?;
            lock(&open.sync).subscriptions = Some(subscriptions);
            if let Some(node) = open.node() {
                let _rt = open.handle.enter();
                node.set_subscriptions(parsed);
            }
            Ok(())
        })
    }

    /// The devices this device can reach now (empty while sync is stopped).
    pub fn peers(&self) -> Vec<Peer> {
        self.get().map(|o| o.presence.borrow().clone()).unwrap_or_default()
    }

    /// Call `observer` with the reachable devices now and whenever they change, until the handle is cancelled.
    pub fn observe_presence(&self, observer: Arc<dyn PresenceObserver>) -> Result<Arc<ObserverHandle>, ShoalError> {
        let open = self.get()?;
        let mut rx = open.presence.subscribe();
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let running = alive.clone();
        let task = open.handle.spawn(async move {
            loop {
                let peers = rx.borrow_and_update().clone();
                if !running.load(std::sync::atomic::Ordering::Acquire) {
                    break;
                }
                report("presence observer", observer.on_presence(peers));
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
        Ok(Arc::new(ObserverHandle::task(task.abort_handle(), alive)))
    }
}

/// A [`WriteOp`] with its values converted, so that only the core's own errors can happen inside the transaction.
enum PreparedOp {
    Upsert { collection: String, json: serde_json::Value },
    UpsertChanged { collection: String, json: serde_json::Value },
    Put { collection: String, id: Option<String>, fields: shoaldb::Value },
    Update { collection: String, id: String, edits: Vec<Prepared> },
    Remove { collection: String, id: String },
}

impl PreparedOp {
    fn new(op: WriteOp) -> Result<PreparedOp, ShoalError> {
        Ok(match op {
            WriteOp::Upsert { collection, json } => {
                PreparedOp::Upsert { collection, json: crate::values::parse_json(&json)? }
            }
            WriteOp::UpsertChanged { collection, json } => {
                PreparedOp::UpsertChanged { collection, json: crate::values::parse_json(&json)? }
            }
            WriteOp::Put { collection, id, fields } => {
                PreparedOp::Put { collection, id, fields: fields_value(fields)? }
            }
            WriteOp::Update { collection, id, edits } => PreparedOp::Update {
                collection,
                id,
                edits: edits.into_iter().map(Prepared::new).collect::<Result<_, _>>()?,
            },
            WriteOp::Remove { collection, id } => PreparedOp::Remove { collection, id },
        })
    }

    fn apply(self, txn: &mut shoaldb::WriteTxn<'_>) -> shoaldb::Result<String> {
        match self {
            PreparedOp::Upsert { collection, json } => txn.upsert(&collection, json),
            PreparedOp::UpsertChanged { collection, json } => txn.upsert_changed(&collection, json),
            PreparedOp::Put { collection, id, fields } => txn.upsert_value(&collection, id.as_deref(), fields),
            PreparedOp::Update { collection, id, edits } => {
                txn.update(&collection, &id, |doc| Prepared::apply_all(edits, doc))?;
                Ok(id)
            }
            PreparedOp::Remove { collection, id } => {
                txn.remove(&collection, &id)?;
                Ok(id)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path, name: &str) -> StoreConfig {
        StoreConfig {
            path: dir.join(format!("{name}.db")).to_string_lossy().into_owned(),
            device_name: name.into(),
            app_secret: Some("test secret".into()),
            sync: SyncConfig { listen: Some("127.0.0.1:0".into()), mdns: false, ..SyncConfig::default() },
            key: None,
            key_vault: None,
        }
    }

    #[test]
    fn bad_configs_are_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = config(dir.path(), "a");
        c.sync.peers = vec!["localhost".into()];
        assert!(matches!(Store::open_blocking(c), Err(ShoalError::InvalidArgument(m)) if m.contains("IP:port")));
        let mut c = config(dir.path(), "a");
        c.app_secret = Some(String::new());
        assert!(matches!(Store::open_blocking(c), Err(ShoalError::InvalidArgument(_))));
        let mut c = config(dir.path(), "a");
        c.sync.subscriptions = Some(vec!["tasks:done ==".into()]);
        assert!(matches!(Store::open_blocking(c), Err(ShoalError::InvalidArgument(_))));
    }

    #[test]
    fn a_store_key_is_32_bytes_and_opens_only_its_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keyed = |key: &[u8]| StoreConfig { key: Some(key.to_vec()), ..config(dir.path(), "k") };
        assert!(
            matches!(Store::open_blocking(keyed(&[1; 16])), Err(ShoalError::InvalidArgument(m)) if m.contains("32"))
        );
        assert!(!format!("{:?}", keyed(&[0xab; 32])).contains("171"), "Debug shows no key bytes");
        if cfg!(feature = "encryption") {
            Store::open_blocking(keyed(&[1; 32])).expect("open encrypted").shutdown();
            assert!(matches!(Store::open_blocking(keyed(&[2; 32])), Err(ShoalError::WrongKey(_))));
            assert!(matches!(Store::open_blocking(config(dir.path(), "k")), Err(ShoalError::WrongKey(_))));
            Store::open_blocking(keyed(&[1; 32])).expect("reopen encrypted").shutdown();
        } else {
            // Never left unencrypted when a key was given.
            assert!(
                matches!(Store::open_blocking(keyed(&[1; 32])), Err(ShoalError::Storage(m)) if m.contains("encryption"))
            );
        }
    }

    #[test]
    fn a_closed_store_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open_blocking(config(dir.path(), "a")).expect("open");
        store.shutdown();
        store.shutdown();
        assert!(matches!(store.collections_blocking(), Err(ShoalError::Closed)));
        assert!(matches!(store.clone().collection("tasks".into()), Err(ShoalError::Closed)));
    }
}
