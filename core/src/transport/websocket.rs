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
//! `ws://` only: TLS, where needed, is the load balancer's (it terminates `wss://`), and the link's own Noise
//! encryption and authentication hold end to end either way.

use crate::transport::lan::connection::{ByteSink, ByteSource};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
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

/// Where a `ws://` URL leads: its host and port (80 when none is given).
pub(crate) fn host_and_port(url: &str) -> Result<(String, u16), String> {
    let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => {
            return Err(format!("{url:?}: wss:// is not supported here (terminate TLS in front of the relay)"))
        }
        _ => return Err(format!("{url:?}: not a ws:// URL")),
    }
    let host = uri.host().ok_or_else(|| format!("{url:?}: no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    Ok((host, uri.port_u16().unwrap_or(80)))
}

/// Dial the WebSocket at `url` over `stream` (a TCP connection to its host).
pub(crate) async fn connect(
    url: &str,
    stream: TcpStream,
) -> Result<(WsSource<TcpStream>, WsSink<TcpStream>), tokio_tungstenite::tungstenite::Error> {
    if let Err(e) = stream.set_nodelay(true) {
        log::debug!("TCP_NODELAY: {e}");
    }
    let (ws, _response) = tokio_tungstenite::client_async_with_config(url, stream, Some(config())).await?;
    Ok(halves(ws))
}

/// The addresses of `url`'s host (a DNS lookup when it is a name).
pub(crate) async fn resolve(url: &str) -> std::io::Result<Vec<SocketAddr>> {
    let (host, port) = host_and_port(url).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let addrs = tokio::net::lookup_host((host.as_str(), port)).await?.collect();
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::host_and_port;

    #[test]
    fn urls_name_a_host_and_port() {
        assert_eq!(host_and_port("ws://relay.example.com/sync"), Ok(("relay.example.com".into(), 80)));
        assert_eq!(host_and_port("ws://127.0.0.1:7421/shoal"), Ok(("127.0.0.1".into(), 7421)));
        assert_eq!(host_and_port("ws://[::1]:9/"), Ok(("::1".into(), 9)));
        for bad in ["wss://relay.example.com/", "http://x/", "relay:80", "ws://", ""] {
            assert!(host_and_port(bad).is_err(), "{bad:?}");
        }
    }
}
