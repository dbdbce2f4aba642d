//! The air's loopback TCP server: one task reads each connection's lines, one owns the [`Air`] and its clock, one
//! writes each connection's answers.

use crate::air::{Air, ConnId};
use serde_json::Value;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The longest line the air reads; a longer one closes that connection.
pub const MAX_LINE: usize = 256 * 1024;

/// Reads one line of the protocol into `line`, after what an interrupted call left there, taking at most
/// [`MAX_LINE`] bytes for it: true when a line (or the last bytes before the end) is in `line`, false at the end of
/// the stream; a longer line is an `InvalidData` error. Cancel safe (in `select!`): the bytes read so far stay in
/// `line`, and the next call goes on from them. Every reader of the protocol (the server, a control, the Linux
/// phone) reads through it.
pub async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R, line: &mut Vec<u8>) -> std::io::Result<bool> {
    let room = (MAX_LINE + 1).saturating_sub(line.len()) as u64;
    let n = (&mut *reader).take(room).read_until(b'\n', line).await?;
    if line.len() > MAX_LINE {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, format!("a line over {MAX_LINE} bytes")));
    }
    Ok(n > 0 || !line.is_empty())
}

enum Event {
    Opened(ConnId, mpsc::UnboundedSender<String>),
    Line(ConnId, Value),
    Closed(ConnId),
}

/// A running air: its address, and the task serving it.
pub struct Server {
    pub address: SocketAddr,
    pub task: tokio::task::JoinHandle<()>,
}

/// Listens on `127.0.0.1:port` (0: any free port) and serves an air seeded with `seed` until the runtime ends.
pub async fn serve(port: u16, seed: u64) -> std::io::Result<Server> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let address = listener.local_addr()?;
    let (events, inbox) = mpsc::unbounded_channel();
    tokio::spawn(accept(listener, events));
    let task = tokio::spawn(run(Air::new(seed), inbox));
    log::info!("the air listens on {address}");
    Ok(Server { address, task })
}

async fn accept(listener: TcpListener, events: mpsc::UnboundedSender<Event>) {
    let mut next: ConnId = 0;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                log::warn!("accept: {e}");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        next += 1;
        tokio::spawn(connection(next, stream, events.clone()));
    }
}

async fn connection(conn: ConnId, stream: TcpStream, events: mpsc::UnboundedSender<Event>) {
    let (read, mut write) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    if events.send(Event::Opened(conn, tx)).is_err() {
        return;
    }
    let writer = tokio::spawn(async move {
        while let Some(line) = rx.recv().await {
            if write.write_all(line.as_bytes()).await.is_err() {
                break;
            }
        }
    });
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        match read_line(&mut reader, &mut line).await {
            Ok(false) => break,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                log::warn!("connection {conn}: {e}; closing it");
                break;
            }
            Ok(true) => match serde_json::from_slice::<Value>(&line) {
                Ok(v) if v.is_object() => {
                    if events.send(Event::Line(conn, v)).is_err() {
                        break;
                    }
                }
                _ => {
                    log::warn!("connection {conn}: not a JSON object; closing it");
                    break;
                }
            },
            Err(_) => break,
        }
    }
    let _ = events.send(Event::Closed(conn));
    writer.abort();
}

async fn run(mut air: Air, mut inbox: mpsc::UnboundedReceiver<Event>) {
    let start = Instant::now();
    let now = || start.elapsed().as_millis() as u64;
    let mut writers: HashMap<ConnId, mpsc::UnboundedSender<String>> = HashMap::new();
    loop {
        let deadline = air.next_deadline();
        let event = match deadline {
            Some(due) => {
                let wait = std::time::Duration::from_millis(due.saturating_sub(now()));
                match tokio::time::timeout(wait, inbox.recv()).await {
                    Ok(e) => e,
                    Err(_) => {
                        send(&writers, air.tick(now()));
                        continue;
                    }
                }
            }
            None => inbox.recv().await,
        };
        let out = match event {
            None => return,
            Some(Event::Opened(conn, tx)) => {
                // The air learns of it from its `hello`.
                writers.insert(conn, tx);
                continue;
            }
            Some(Event::Line(conn, msg)) => air.message(conn, now(), msg),
            Some(Event::Closed(conn)) => {
                writers.remove(&conn);
                air.closed(conn, now())
            }
        };
        send(&writers, out);
    }
}

fn send(writers: &HashMap<ConnId, mpsc::UnboundedSender<String>>, out: Vec<(ConnId, Value)>) {
    for (conn, msg) in out {
        if let Some(w) = writers.get(&conn) {
            let _ = w.send(format!("{msg}\n"));
        }
    }
}
