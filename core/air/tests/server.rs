//! The air over loopback TCP: phones and a control connection, commands routed to a phone and its answer back, and
//! a connection that sends garbage or an over-long line is closed without disturbing the others.

use serde_json::{json, Value};
use shoaldb_air::control::Control;
use shoaldb_air::server::{self, MAX_LINE};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

struct Phone {
    lines: Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
}

impl Phone {
    async fn join(address: std::net::SocketAddr, name: &str) -> Phone {
        let (read, write) = TcpStream::connect(address).await.expect("connect").into_split();
        let mut phone = Phone { lines: BufReader::new(read).lines(), write };
        phone.send(json!({"op": "hello", "role": "phone", "phone": name, "platform": "android", "mtu": 517})).await;
        assert_eq!(phone.next().await["op"], "welcome");
        phone
    }

    async fn send(&mut self, msg: Value) {
        self.write.write_all(format!("{msg}\n").as_bytes()).await.expect("write");
    }

    async fn next(&mut self) -> Value {
        let line = self.lines.next_line().await.expect("read").expect("a line");
        serde_json::from_str(&line).expect("json")
    }
}

#[tokio::test]
async fn commands_reach_the_phone_and_answers_come_back() {
    let air = server::serve(0, 1).await.expect("serve");
    let control = Control::connect(air.address).await.expect("control");
    let mut phone = Phone::join(air.address, "A1").await;
    let answer = tokio::spawn(async move { control.run("A1", json!({"cmd": "notes"})).await });
    let command = phone.next().await;
    assert_eq!((command["op"].as_str(), command["cmd"].as_str()), (Some("do"), Some("notes")));
    phone.send(json!({"op": "done", "id": command["id"], "ok": true, "notes": {"n1": "hello"}})).await;
    let answer = answer.await.expect("join").expect("answer");
    assert_eq!(answer["notes"]["n1"], "hello");
    assert_eq!(answer["phone"], "A1");
}

#[tokio::test]
async fn a_failed_command_is_an_error() {
    let air = server::serve(0, 1).await.expect("serve");
    let control = Control::connect(air.address).await.expect("control");
    let mut phone = Phone::join(air.address, "I1").await;
    let answer = tokio::spawn(async move { control.run("I1", json!({"cmd": "open"})).await });
    let command = phone.next().await;
    phone.send(json!({"op": "done", "id": command["id"], "ok": false, "error": "no radio"})).await;
    let err = answer.await.expect("join").expect_err("a failure");
    assert!(err.to_string().contains("no radio"), "{err}");
}

#[tokio::test]
async fn garbage_and_over_long_lines_close_only_their_connection() {
    let air = server::serve(0, 1).await.expect("serve");
    let control = Control::connect(air.address).await.expect("control");
    let mut a = Phone::join(air.address, "A1").await;
    let mut b = Phone::join(air.address, "A2").await;
    b.send(json!({"op": "advertise", "services": ["abc"]})).await;
    assert_eq!(b.next().await["op"], "advertising");
    a.send(json!({"op": "connect", "peer": "02:00:00:00:00:02", "ref": 1, "timeout_ms": 1000})).await;
    assert_eq!(a.next().await["op"], "connected");
    assert_eq!(b.next().await["op"], "incoming");

    // A third phone sends a line longer than the limit: it is closed; A1 and A2 keep their link.
    let mut c = Phone::join(air.address, "A3").await;
    c.write.write_all(&vec![b'x'; MAX_LINE + 10]).await.expect("write");
    c.write.write_all(b"\n").await.expect("write");
    assert!(c.lines.next_line().await.map(|l| l.is_none()).unwrap_or(true), "closed");
    // And one that sends something that is not JSON.
    let mut d = Phone::join(air.address, "A4").await;
    d.write.write_all(b"{not json\n").await.expect("write");
    assert!(d.lines.next_line().await.map(|l| l.is_none()).unwrap_or(true), "closed");

    let traffic = control.traffic().await.expect("traffic");
    assert_eq!(traffic["links"], 1);
    assert_eq!(traffic["phones"], json!(["A1", "A2"]));
}
