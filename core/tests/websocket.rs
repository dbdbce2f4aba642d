//! Sync links inside WebSocket connections (how devices reach the cloud's relays through HTTP load balancers):
//! two nodes sync both ways over one, also as `wss://` through a TLS-terminating proxy (a load balancer with a
//! certificate of a private authority the device trusts; a device that does not trust it never gets through), and
//! a node taking WebSocket links shrugs off what a hostile client sends — no upgrade, garbage, a message beyond the
//! bound, a text message — closing only that connection.
#![cfg(feature = "websocket")]

use futures::{SinkExt, StreamExt};
use serde_json::json;
use shoaldb::node::{Node, NodeConfig};
use shoaldb::security::AppSecret;
use shoaldb::sync::TransportKind;
use shoaldb::transport::websocket::MAX_MESSAGE_BYTES;
use shoaldb::Store;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::{Bytes, Message};

const PATIENCE: Duration = Duration::from_secs(30);

fn secret() -> AppSecret {
    AppSecret::from_bytes(b"websocket test secret").expect("secret")
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A node accepting WebSocket links only (no TCP listener, no mDNS), like a relay behind a load balancer.
async fn server(store: &Store) -> (Node, SocketAddr) {
    let config =
        NodeConfig::new("server", secret()).with_mdns(false).listen_websocket_on("127.0.0.1:0".parse().unwrap());
    let node = Node::start(store.clone(), config).await.expect("server starts");
    let addr = node.websocket_addr().expect("accepting WebSocket links");
    (node, addr)
}

/// Whether the server closed `stream` (end of stream or reset), reading and discarding whatever it sent.
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// Whether the server closed the WebSocket `ws` (a close message, an error or the end), reading what it sent.
async fn closed<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
) -> bool {
    tokio::time::timeout(PATIENCE, async {
        while let Some(m) = ws.next().await {
            if m.is_err() || matches!(m, Ok(Message::Close(_))) {
                break;
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sync_both_ways_over_a_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Store::open(dir.path().join("a.db")).unwrap(), Store::open(dir.path().join("b.db")).unwrap());
    let (server, addr) = server(&a).await;
    let config = NodeConfig::new("phone", secret()).with_mdns(false).connect_to_cloud(format!("ws://{addr}/sync"));
    let phone = Node::start(b.clone(), config).await.unwrap();
    a.upsert("notes", json!({"_id": "from server", "v": 1})).unwrap();
    b.upsert("notes", json!({"_id": "from phone", "v": 2})).unwrap();
    eventually("both hold both notes", || {
        a.get("notes", "from phone").unwrap().is_some() && b.get("notes", "from server").unwrap().is_some()
    })
    .await;
    // Live: a later edit travels too.
    b.upsert("notes", json!({"_id": "from server", "v": 3})).unwrap();
    eventually("the edit reaches the server", || a.get("notes", "from server").unwrap().is_some_and(|d| d["v"] == 3))
        .await;
    // The link is the cloud's, at both ends.
    let direct =
        |node: &Node| node.peers().into_iter().filter(|p| p.hops == 1).map(|p| p.transport).collect::<Vec<_>>();
    assert_eq!(direct(&phone), vec![TransportKind::Cloud]);
    assert_eq!(direct(&server), vec![TransportKind::Cloud]);
    phone.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_cloud_url_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("a.db")).unwrap();
    for url in ["wss:///sync", "http://relay/", "relay:80"] {
        let config = NodeConfig::new("phone", secret()).with_mdns(false).connect_to_cloud(url);
        match Node::start(store.clone(), config).await {
            Err(shoaldb::NodeError::Config(_)) => {}
            other => panic!("{url}: expected a configuration error, got {other:?}"),
        }
    }
    // A trusted certificate that is not one.
    let config = NodeConfig::new("phone", secret())
        .with_mdns(false)
        .connect_to_cloud("wss://relay.example.com/sync")
        .trust_cloud_certificate("not a certificate");
    assert!(matches!(Node::start(store.clone(), config).await, Err(shoaldb::NodeError::Config(_))));
}

/// A certificate authority of the test's own, and a certificate it issued for `localhost` with its key: PEM.
fn private_authority() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "Shoal test authority");
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &ca).unwrap();
    (ca.pem(), leaf.pem(), key.serialize_pem())
}

/// A TLS-terminating proxy on loopback in front of `backend` (what an HTTPS load balancer does): each connection's
/// TLS is accepted with `cert`/`key` (PEM), then its bytes are passed both ways to `backend`. Each TLS
/// handshake's outcome is sent on the channel (`Err`: why it failed).
async fn tls_proxy(
    backend: SocketAddr,
    cert: &str,
    key: &str,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Result<(), String>>) {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (outcomes, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, outcomes) = (acceptor.clone(), outcomes.clone());
            tokio::spawn(async move {
                match acceptor.accept(stream).await {
                    Ok(mut tls) => {
                        let _ = outcomes.send(Ok(()));
                        if let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await {
                            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                        }
                    }
                    Err(e) => {
                        let _ = outcomes.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_syncs_over_wss_through_a_tls_terminating_proxy_it_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Store::open(dir.path().join("a.db")).unwrap(), Store::open(dir.path().join("b.db")).unwrap());
    let (server, addr) = server(&a).await;
    let (ca, cert, key) = private_authority();
    let (proxy, mut outcomes) = tls_proxy(addr, &cert, &key).await;
    let url = format!("wss://localhost:{}/sync", proxy.port());

    // Trusting Mozilla's authorities only, the phone refuses the proxy's certificate: no link, nothing synced.
    b.upsert("notes", json!({"_id": "from phone", "v": 1})).unwrap();
    let config = NodeConfig::new("untrusting phone", secret()).with_mdns(false).connect_to_cloud(url.clone());
    let untrusting = Node::start(b.clone(), config).await.unwrap();
    let refused = tokio::time::timeout(PATIENCE, outcomes.recv()).await.expect("a TLS handshake").unwrap();
    let why = refused.expect_err("the phone accepted a certificate it does not trust");
    assert!(why.contains("UnknownCA"), "the phone refused the certificate for another reason: {why}");
    untrusting.shutdown().await;
    assert!(a.get("notes", "from phone").unwrap().is_none());
    assert!(server.peers().is_empty());

    // Trusting the organisation's authority, it syncs both ways through the proxy.
    let config = NodeConfig::new("phone", secret()).with_mdns(false).connect_to_cloud(url).trust_cloud_certificate(ca);
    let phone = Node::start(b.clone(), config).await.unwrap();
    a.upsert("notes", json!({"_id": "from server", "v": 2})).unwrap();
    eventually("both hold both notes", || {
        a.get("notes", "from phone").unwrap().is_some() && b.get("notes", "from server").unwrap().is_some()
    })
    .await;
    assert_eq!(phone.peers().iter().filter(|p| p.hops == 1).count(), 1);
    phone.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_websocket_clients_are_closed_and_an_honest_link_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (Store::open(dir.path().join("a.db")).unwrap(), Store::open(dir.path().join("b.db")).unwrap());
    let (server, addr) = server(&a).await;
    let config = NodeConfig::new("phone", secret()).with_mdns(false).connect_to_cloud(format!("ws://{addr}/"));
    let phone = Node::start(b.clone(), config).await.unwrap();
    b.upsert("notes", json!({"_id": "before"})).unwrap();
    eventually("the honest phone's note arrives", || a.get("notes", "before").unwrap().is_some()).await;

    // A connection that never upgrades is closed after the handshake deadline.
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Garbage instead of an HTTP upgrade is closed at once.
    let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
    garbage.write_all(&[0xff; 4096]).await.unwrap();
    assert!(closed_by_server(&mut garbage).await, "garbage was not closed");

    // An upgraded connection that sends a message beyond the bound is closed before it is buffered.
    let (mut big, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/"), tokio::net::TcpStream::connect(addr).await.unwrap())
            .await
            .expect("the upgrade succeeds");
    let _ = big.send(Message::Binary(Bytes::from(vec![0u8; MAX_MESSAGE_BYTES + 1]))).await;
    assert!(closed(big).await, "an oversized message did not close the connection");

    // A text message closes the connection too.
    let (mut text, _) =
        tokio_tungstenite::client_async(format!("ws://{addr}/"), tokio::net::TcpStream::connect(addr).await.unwrap())
            .await
            .expect("the upgrade succeeds");
    text.send(Message::Text("hello".into())).await.unwrap();
    assert!(closed(text).await, "a text message did not close the connection");

    assert!(closed_by_server(&mut silent).await, "a connection that never upgraded stayed open");
    // The honest link carried on all along.
    b.upsert("notes", json!({"_id": "after"})).unwrap();
    eventually("the honest phone's later note arrives", || a.get("notes", "after").unwrap().is_some()).await;
    assert_eq!(phone.peers().iter().filter(|p| p.hops == 1).count(), 1, "the honest link is gone");
    phone.shutdown().await;
    server.shutdown().await;
}
