//! Sync links inside WebSocket connections: how devices reach the cloud's relays through ordinary HTTP(S) load
//! balancers and proxies, which pass WebSocket but not raw TCP.
//!
//! The WebSocket carries the same byte stream a TCP link carries — the Noise handshake, then encrypted frames — in
//! binary messages (any cut: the receiver reassembles the stream). Everything above is the LAN transport's: the
//! same connection tasks ([`super::lan`]'s reader and writer around one engine link), the same listener limits
//! and handshake deadline, the same dialling with backoff. The WebSocket layer adds only its framing, bounded:
//! a message or frame larger than [`MAX_MESSAGE_BYTES`] closes the connection before it is buffered, a text
//! message closes it, and an upgrade that does not complete within the handshake deadline closes it.
//!
//! A device dials `ws://` or `wss://` URLs. `wss://` adds TLS to whatever terminates HTTPS in front of the relays
//! (a load balancer, a reverse proxy): rustls, with Mozilla's trust anchors (the same on every platform) plus any
//! the app adds for a private certificate authority ([`NodeConfig::cloud_trust`](crate::NodeConfig::cloud_trust)).
//! TLS only gets the link through; the link's own Noise encryption and authentication hold end to end either way,
//! so a proxy that terminates TLS reads nothing of the sync. Relays accept plain WebSocket (TLS is terminated in
//! front of them).

use crate::transport::lan::connection::{ByteSink, ByteSource};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;

/// The largest WebSocket message (and frame) accepted. The writer sends at most about 256 KiB per message.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// The WebSocket settings of both ends: bounded messages and frames.
fn config() -> WebSocketConfig {
    WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE_BYTES)).max_frame_size(Some(MAX_MESSAGE_BYTES))
}

/// The receiving half of a WebSocket link, as a byte stream.
pub(crate) struct WsSource<S> {
    stream: SplitStream<WebSocketStream<S>>,
    /// The message being read, and how much of it was.
    pending: Bytes,
    at: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ByteSource for WsSource<S> {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.at < self.pending.len() {
                let n = buf.len().min(self.pending.len() - self.at);
                buf[..n].copy_from_slice(&self.pending[self.at..self.at + n]);
                self.at += n;
                return Ok(n);
            }
            match self.stream.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(0),
                Some(Ok(Message::Binary(data))) => {
                    self.pending = data;
                    self.at = 0;
                }
                // Answered by tungstenite itself (pings), or nothing to do.
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Ok(Message::Text(_))) => {
                    return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "a text message on a sync link"))
                }
                Some(Err(e)) => return Err(std::io::Error::other(e)),
            }
        }
    }
}

/// The sending half of a WebSocket link: each write one binary message.
pub(crate) struct WsSink<S> {
    sink: SplitSink<WebSocketStream<S>, Message>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ByteSink for WsSink<S> {
    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.sink.send(Message::Binary(Bytes::copy_from_slice(data))).await.map_err(std::io::Error::other)
    }

    async fn shutdown(&mut self) -> std::io::Result<()> {
        self.sink.close().await.map_err(std::io::Error::other)
    }
}

/// The two halves of `ws`.
fn halves<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(ws: WebSocketStream<S>) -> (WsSource<S>, WsSink<S>) {
    let (sink, stream) = ws.split();
    (WsSource { stream, pending: Bytes::new(), at: 0 }, WsSink { sink })
}

/// Take the WebSocket upgrade of an accepted TCP connection (any path).
pub(crate) async fn accept(
    stream: TcpStream,
) -> Result<(WsSource<TcpStream>, WsSink<TcpStream>), tokio_tungstenite::tungstenite::Error> {
    if let Err(e) = stream.set_nodelay(true) {
        log::debug!("TCP_NODELAY: {e}");
    }
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(config())).await?;
    Ok(halves(ws))
}

/// A byte stream a WebSocket runs over: a TCP connection, or TLS over one.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A relay's WebSocket a device dials: its URL, host and port, and the TLS settings of a `wss://` URL.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub url: String,
    host: String,
    port: u16,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Endpoint {
    /// The endpoint at `url` (`ws://host[:port]/path`, port 80 by default, or `wss://…`, 443), trusting for `wss://`
    /// Mozilla's certificate authorities and those of `trust` (PEM certificates).
    pub fn parse(url: &str, trust: &[String]) -> Result<Endpoint, String> {
        let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => return Err(format!("{url:?}: not a ws:// or wss:// URL")),
        };
        let host = uri.host().ok_or_else(|| format!("{url:?}: no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tls = if secure { Some(tls_config(trust)?) } else { None };
        Ok(Endpoint { url: url.to_string(), host, port, tls })
    }

    /// The addresses of the host (a DNS lookup when it is a name).
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((self.host.as_str(), self.port)).await?.collect())
    }

    /// Dial the WebSocket over `stream` (a TCP connection to the host): TLS first for `wss://` (the certificate
    /// checked against the host name), then the upgrade.
    pub async fn connect(&self, stream: TcpStream) -> std::io::Result<(WsSource<Box<dyn Io>>, WsSink<Box<dyn Io>>)> {
        if let Err(e) = stream.set_nodelay(true) {
            log::debug!("TCP_NODELAY: {e}");
        }
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(stream),
            Some(config) => {
                let name = ServerName::try_from(self.host.clone())
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
                Box::new(tokio_rustls::TlsConnector::from(config.clone()).connect(name, stream).await?)
            }
        };
        let (ws, _response) = tokio_tungstenite::client_async_with_config(self.url.as_str(), io, Some(config()))
            .await
            .map_err(std::io::Error::other)?;
        Ok(halves(ws))
    }
}

/// The TLS client settings of `wss://` dials: Mozilla's certificate authorities and those of `trust` (PEM).
fn tls_config(trust: &[String]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for pem in trust {
        let mut any = false;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| format!("a trusted certificate is not valid PEM: {e}"))?;
            roots.add(cert).map_err(|e| format!("a trusted certificate cannot be used: {e}"))?;
            any = true;
        }
        if !any {
            return Err("a trusted certificate holds no PEM certificate".into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::Endpoint;

    fn host_and_port(url: &str) -> Result<(String, u16, bool), String> {
        Endpoint::parse(url, &[]).map(|e| (e.host, e.port, e.tls.is_some()))
    }

    #[test]
    fn urls_name_a_host_and_port() {
        assert_eq!(host_and_port("ws://relay.example.com/sync"), Ok(("relay.example.com".into(), 80, false)));
        assert_eq!(host_and_port("ws://127.0.0.1:7421/shoal"), Ok(("127.0.0.1".into(), 7421, false)));
        assert_eq!(host_and_port("ws://[::1]:9/"), Ok(("::1".into(), 9, false)));
        assert_eq!(host_and_port("wss://relay.example.com/sync"), Ok(("relay.example.com".into(), 443, true)));
        assert_eq!(host_and_port("wss://relay.example.com:8443/"), Ok(("relay.example.com".into(), 8443, true)));
        for bad in ["http://x/", "relay:80", "ws://", ""] {
            assert!(host_and_port(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn trusted_certificates_must_be_pem_certificates() {
        for bad in ["", "not a certificate", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"] {
            assert!(Endpoint::parse("wss://relay.example.com/", &[bad.to_string()]).is_err(), "{bad:?}");
        }
    }
}
