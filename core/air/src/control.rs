//! A control connection to the air: shapes it (range, app state, loss, reordering), reads its traffic and runs
//! commands on phones (`do`).

use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::oneshot;

type Waiter = oneshot::Sender<Value>;

#[derive(Default)]
struct Waiting {
    commands: HashMap<u64, Waiter>,
    answers: VecDeque<Waiter>,
}

/// A control connection.
pub struct Control {
    write: tokio::sync::Mutex<OwnedWriteHalf>,
    waiting: Arc<Mutex<Waiting>>,
    next: std::sync::atomic::AtomicU64,
}

/// How long a phone may take over one command (an `open` starts a JVM's store and radio).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

impl Control {
    /// Connects to the air at `address` as a control.
    pub async fn connect(address: SocketAddr) -> std::io::Result<Control> {
        let stream = TcpStream::connect(address).await?;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let inbox = waiting.clone();
        tokio::spawn(async move {
            let (mut reader, mut line) = (BufReader::new(read), Vec::new());
            while let Ok(true) = crate::server::read_line(&mut reader, &mut line).await {
                let parsed = serde_json::from_slice::<Value>(&line);
                line.clear();
                let Ok(msg) = parsed else { continue };
                let Ok(mut w) = inbox.lock() else { return };
                let waiter = if msg.get("op").and_then(Value::as_str) == Some("done") {
                    msg.get("id").and_then(Value::as_u64).and_then(|id| w.commands.remove(&id))
                } else {
                    w.answers.pop_front()
                };
                if let Some(waiter) = waiter {
                    let _ = waiter.send(msg);
                }
            }
        });
        let control = Control { write: tokio::sync::Mutex::new(write), waiting, next: 1.into() };
        control.ask(json!({"op": "hello", "role": "control"})).await?;
        Ok(control)
    }

    async fn send(&self, msg: &Value) -> std::io::Result<()> {
        self.write.lock().await.write_all(format!("{msg}\n").as_bytes()).await
    }

    fn lost() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the air closed the control connection")
    }

    /// Sends a control message and waits for the air's answer (an `error` answer is an error).
    pub async fn ask(&self, msg: Value) -> std::io::Result<Value> {
        let (tx, rx) = oneshot::channel();
        {
            // The answer queue and the socket's order must agree: hold the writer while queueing.
            let mut write = self.write.lock().await;
            self.waiting.lock().map_err(|_| Self::lost())?.answers.push_back(tx);
            write.write_all(format!("{msg}\n").as_bytes()).await?;
        }
        let answer = rx.await.map_err(|_| Self::lost())?;
        if answer.get("op").and_then(Value::as_str) == Some("error") {
            return Err(std::io::Error::other(format!("the air refused {msg}: {answer}")));
        }
        Ok(answer)
    }

    /// Runs `command` (an object with `cmd`) on `phone` and returns its answer; `ok: false` is an error.
    pub async fn run(&self, phone: &str, mut command: Value) -> std::io::Result<Value> {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().map_err(|_| Self::lost())?.commands.insert(id, tx);
        if let Some(obj) = command.as_object_mut() {
            obj.insert("op".into(), json!("do"));
            obj.insert("phone".into(), json!(phone));
            obj.insert("id".into(), json!(id));
        }
        self.send(&command).await?;
        let answer = match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
            Ok(Ok(a)) => a,
            Ok(Err(_)) => return Err(Self::lost()),
            Err(_) => return Err(std::io::Error::other(format!("{phone} did not answer {command} in time"))),
        };
        if answer.get("ok").and_then(Value::as_bool) != Some(true) {
            return Err(std::io::Error::other(format!("{phone} failed {command}: {answer}")));
        }
        Ok(answer)
    }

    /// The air's traffic counters.
    pub async fn traffic(&self) -> std::io::Result<Value> {
        self.ask(json!({"op": "traffic"})).await
    }
}
