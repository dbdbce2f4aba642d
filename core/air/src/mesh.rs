//! Mesh scenarios over the shared air: phone programs (the shipped Android and iOS radios, see PROTOCOL.md's last
//! section) are started once, and each scenario opens fresh stores on the phones it uses, shapes the air, edits and
//! waits until the phones converge. Every scenario runs with several seeds (the air's loss and reordering follow
//! the seed; the phones' own timing is the processes').

use crate::control::Control;
use crate::server;
use base64::Engine as _;
use serde_json::{json, Value};
use shoaldb::util::rng::SeededRng;
use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A phone program to start: its name on the air and the command that starts it (the air's address and the name
/// are appended).
#[derive(Clone, Debug)]
pub struct PhoneProgram {
    pub name: String,
    pub command: String,
}

/// What `run` needs.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    pub phones: Vec<PhoneProgram>,
    pub seeds: u64,
    pub only: Option<String>,
    pub log_dir: PathBuf,
    /// How long the phones may take to converge in one step of a scenario.
    pub converge_timeout: Duration,
}

type Result<T> = std::result::Result<T, String>;

fn io(e: std::io::Error) -> String {
    e.to_string()
}

/// The scenarios, by name.
pub const SCENARIOS: &[&str] = &["line", "groups", "dial", "walk", "attachment", "background", "restore"];

struct Mesh {
    control: Control,
    /// The phones by name, in the order given: Android phones are named A…, iPhones I…, Linux peers L….
    android: Vec<String>,
    ios: Vec<String>,
    linux: Vec<String>,
    converge_timeout: Duration,
    rng: SeededRng,
    opened: Vec<String>,
    /// The opened phones that use L2CAP (the others keep to GATT).
    l2cap: Vec<String>,
    /// Whether this run's air loses and reorders.
    rough: bool,
    seed: u64,
    /// Packets in flight per direction of a GATT link, this run.
    window: u64,
}

/// Starts the air and the phones, runs the scenarios (each with `seeds` seeds) and prints a JSON line per run.
/// An error names the first scenario that failed.
pub async fn run(options: MeshOptions) -> Result<()> {
    std::fs::create_dir_all(&options.log_dir).map_err(io)?;
    let air = server::serve(0, 0).await.map_err(io)?;
    let mut children = Vec::new();
    for p in &options.phones {
        let log = options.log_dir.join(format!("{}.log", p.name));
        let file = std::fs::File::create(&log).map_err(io)?;
        let err = file.try_clone().map_err(io)?;
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("exec {} {} {}", p.command, air.address, p.name))
            .stdout(file)
            .stderr(err)
            .stdin(std::process::Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", p.name))?;
        children.push((p.name.clone(), child));
    }
    let outcome = scenarios(&options, air.address).await;
    for (name, mut child) in children {
        if let Some(pid) = child.id() {
            // The phone's whole process group (a chroot, a JVM under a shell).
            let _ = std::process::Command::new("kill").arg("--").arg(format!("-{pid}")).status();
        }
        let _ = child.kill().await;
        log::info!("{name} stopped");
    }
    air.task.abort();
    outcome
}

async fn scenarios(options: &MeshOptions, address: std::net::SocketAddr) -> Result<()> {
    let control = Control::connect(address).await.map_err(io)?;
    let names: Vec<String> = options.phones.iter().map(|p| p.name.clone()).collect();
    let started = Instant::now();
    // The phones join when their programs are up (a JVM with Robolectric takes a while).
    loop {
        let t = control.traffic().await.map_err(io)?;
        let here: Vec<&str> =
            t["phones"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if names.iter().all(|n| here.contains(&n.as_str())) {
            break;
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err(format!(
                "phones did not join the air within 300 s: {here:?} of {names:?} (logs: {})",
                options.log_dir.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    println!(
        "{}",
        json!({"bench": "air_mesh", "event": "phones_joined", "phones": names,
        "ms": started.elapsed().as_millis() as u64})
    );
    let mut mesh = Mesh {
        control,
        android: names.iter().filter(|n| n.starts_with('A')).cloned().collect(),
        ios: names.iter().filter(|n| n.starts_with('I')).cloned().collect(),
        linux: names.iter().filter(|n| n.starts_with('L')).cloned().collect(),
        converge_timeout: options.converge_timeout,
        rng: SeededRng::new(0),
        opened: Vec::new(),
        l2cap: Vec::new(),
        rough: false,
        seed: 0,
        window: 8,
    };
    for &scenario in SCENARIOS {
        if options.only.as_deref().is_some_and(|o| o != scenario) {
            continue;
        }
        for seed in 1..=options.seeds {
            let t = Instant::now();
            mesh.rng = SeededRng::new(seed);
            let mut outcome = mesh.scenario(scenario, seed).await;
            let traffic = mesh.control.traffic().await.map_err(io)?;
            // A radio that respects the link sends nothing over the MTU and nothing into a full window.
            for broken in ["oversized", "overrun"] {
                let n = traffic[broken].as_u64().unwrap_or(0);
                if n > 0 && outcome.is_ok() {
                    outcome = Err(format!("{n} packets {broken} (a radio ignored the link's MTU or its window)"));
                }
            }
            let ok = outcome.is_ok();
            println!(
                "{}",
                json!({"scenario": scenario, "seed": seed, "ok": ok, "ms": t.elapsed().as_millis() as u64,
                    "l2cap": mesh.l2cap, "air": if mesh.rough { "rough" } else { "calm" },
                    "connections": traffic["connections"], "dials": traffic["dials"], "writes": traffic["writes"],
                    "notifications": traffic["notifications"], "stream_bytes": traffic["stream_bytes"],
                    "oversized": traffic["oversized"], "overrun": traffic["overrun"], "window": mesh.window,
                    "lost_links": traffic["lost_links"], "lost_attempts": traffic["lost_attempts"], "reordered": traffic["reordered"],
                    "error": outcome.as_ref().err()})
            );
            mesh.close_all().await;
            if let Err(e) = outcome {
                return Err(format!("scenario {scenario}, seed {seed}: {e}"));
            }
        }
    }
    for name in names {
        let _ = mesh.control.run(&name, json!({"cmd": "quit"})).await;
    }
    Ok(())
}

impl Mesh {
    fn phone(&self, platform: &str, i: usize) -> Result<String> {
        let list = if platform == "A" { &self.android } else { &self.ios };
        list.get(i).cloned().ok_or_else(|| format!("the scenario needs {} {platform} phones", i + 1))
    }

    async fn scenario(&mut self, name: &str, seed: u64) -> Result<()> {
        // Seeds 1, 4, 7… (L2CAP where the phones can): 8 packets in flight per direction of a GATT link; seeds 2, 5,
        // 8… (GATT only): 1, so that a radio must wait for the OS's ready callbacks; seeds 3, 6, 9…: 3.
        let window = [3, 8, 1][(seed % 3) as usize];
        self.window = window;
        self.control.ask(json!({"op": "reset", "window": window})).await.map_err(io)?;
        self.control.ask(json!({"op": "seed", "seed": seed})).await.map_err(io)?;
        self.seed = seed;
        // Every third seed, a rough air: failed connection attempts, links that drop, packets that overtake.
        // (Not for `walk`, `dial` and `restore`, which count links and packets.)
        self.rough = seed % 3 == 0 && !matches!(name, "walk" | "dial" | "restore");
        if self.rough {
            self.control.ask(json!({"op": "loss", "connect": 0.1, "drop_link": 0.002})).await.map_err(io)?;
            self.control.ask(json!({"op": "reorder", "chance": 0.02})).await.map_err(io)?;
        }
        match name {
            "line" => self.line().await,
            "groups" => self.groups().await,
            "dial" => self.dial().await,
            "walk" => self.walk().await,
            "attachment" => self.attachment().await,
            "background" => self.background().await,
            "restore" => self.restore().await,
            _ => Err(format!("no scenario {name}")),
        }
    }

    async fn range(&self, pairs: &[(&str, &str)]) -> Result<()> {
        let hears: Vec<[&str; 2]> = pairs.iter().map(|(a, b)| [*a, *b]).collect();
        self.control.ask(json!({"op": "range", "hears": hears})).await.map_err(io)?;
        Ok(())
    }

    /// Opens fresh stores on `phones`: with seeds 1, 4, 7… every phone uses L2CAP where it can, with seeds 2, 5,
    /// 8… every phone keeps to GATT, with seeds 3, 6, 9… each phone draws.
    async fn open(&mut self, phones: &[&str]) -> Result<()> {
        for p in phones {
            let l2cap = match self.seed % 3 {
                1 => true,
                2 => false,
                _ => self.rng.chance(0.5),
            };
            self.control.run(p, json!({"cmd": "open", "l2cap": l2cap})).await.map_err(io)?;
            self.opened.push(p.to_string());
            if l2cap {
                self.l2cap.push(p.to_string());
            }
        }
        Ok(())
    }

    /// Waits until the air holds exactly `links` links and no connection attempt.
    async fn links(&self, links: u64) -> Result<()> {
        self.until(&format!("{links} links on the air and no attempt pending"), || async {
            let t = self.control.traffic().await.map_err(io)?;
            match (t["links"].as_u64(), t["attempts"].as_u64()) {
                (Some(n), Some(0)) if n == links => Ok(Ok(())),
                (n, attempts) => Ok(Err(format!("{n:?} links, {attempts:?} attempts pending"))),
            }
        })
        .await
    }

    async fn close_all(&mut self) {
        self.l2cap.clear();
        for p in std::mem::take(&mut self.opened) {
            if let Err(e) = self.control.run(&p, json!({"cmd": "close"})).await {
                log::warn!("closing {p}: {e}");
            }
        }
    }

    async fn put(&self, phone: &str, doc: &str, text: &str) -> Result<()> {
        self.control.run(phone, json!({"cmd": "put", "doc": doc, "text": text})).await.map_err(io)?;
        Ok(())
    }

    /// Each of `phones` puts note "<phone>-<tag>", a text of `len` characters drawn from the seed, and `expected`
    /// gets it.
    async fn put_each(
        &mut self,
        phones: &[&str],
        tag: &str,
        len: usize,
        expected: &mut BTreeMap<String, String>,
    ) -> Result<()> {
        for p in phones {
            let doc = format!("{p}-{tag}");
            let text = self.text(&doc, len);
            self.put(p, &doc, &text).await?;
            expected.insert(doc, text);
        }
        Ok(())
    }

    async fn notes(&self, phone: &str) -> Result<BTreeMap<String, Value>> {
        let answer = self.control.run(phone, json!({"cmd": "notes"})).await.map_err(io)?;
        Ok(answer["notes"].as_object().map(|m| m.clone().into_iter().collect()).unwrap_or_default())
    }

    /// Waits until `done` holds, asking every half second, or fails with what `done` said last.
    async fn until<F, Fut>(&self, what: &str, done: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<std::result::Result<(), String>>>,
    {
        self.until_every(what, Duration::from_millis(500), done).await
    }

    /// Waits until `done` holds, asking every `every`, or fails with what `done` said last.
    async fn until_every<F, Fut>(&self, what: &str, every: Duration, mut done: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<std::result::Result<(), String>>>,
    {
        let start = Instant::now();
        loop {
            let last = match done().await? {
                Ok(()) => return Ok(()),
                Err(last) => last,
            };
            if start.elapsed() > self.converge_timeout {
                return Err(format!("{what}: not within {} s; last: {last}", self.converge_timeout.as_secs()));
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Waits until every phone of `phones` holds exactly the same notes, all of `expected` among them.
    async fn converge(&self, phones: &[&str], expected: &BTreeMap<String, String>) -> Result<()> {
        self.until(&format!("{phones:?} converging"), || async {
            let mut states = Vec::new();
            for p in phones {
                states.push(self.notes(p).await?);
            }
            for (p, s) in phones.iter().zip(&states) {
                for (doc, text) in expected {
                    if s.get(doc).and_then(Value::as_str) != Some(text.as_str()) {
                        return Ok(Err(format!("{p} lacks {doc} ({} notes)", s.len())));
                    }
                }
            }
            if states.windows(2).any(|w| w[0] != w[1]) {
                return Ok(Err("the phones hold different notes".into()));
            }
            Ok(Ok(()))
        })
        .await
    }

    /// A text of `len` characters drawn from the scenario's seed.
    fn text(&mut self, tag: &str, len: usize) -> String {
        let mut s = format!("{tag}:");
        while s.len() < len {
            s.push(char::from(b'a' + self.rng.below(26) as u8));
        }
        s
    }

    async fn connections(&self) -> Result<Vec<String>> {
        let t = self.control.traffic().await.map_err(io)?;
        Ok(t["connections"]
            .as_array()
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default())
    }

    /// A–i–A–i–A, Bluetooth only: an edit at one end reaches the other, through every phone between.
    async fn line(&mut self) -> Result<()> {
        let line =
            [self.phone("A", 0)?, self.phone("I", 0)?, self.phone("A", 1)?, self.phone("I", 1)?, self.phone("A", 2)?];
        let l: Vec<&str> = line.iter().map(String::as_str).collect();
        self.range(&[(l[0], l[1]), (l[1], l[2]), (l[2], l[3]), (l[3], l[4])]).await?;
        self.open(&l).await?;
        let mut expected = BTreeMap::new();
        let first = self.text("from the first", 300);
        self.put(l[0], "left", &first).await?;
        expected.insert("left".to_string(), first);
        let last = self.text("from the last", 300);
        self.put(l[4], "right", &last).await?;
        expected.insert("right".to_string(), last);
        self.converge(&l, &expected).await?;
        // Only neighbours ever connected.
        for c in self.connections().await? {
            let ends: Vec<&str> = c.split('>').collect();
            let (Some(a), Some(b)) =
                (l.iter().position(|p| Some(p) == ends.first()), l.iter().position(|p| Some(p) == ends.get(1)))
            else {
                return Err(format!("a connection outside the line: {c}"));
            };
            if a.abs_diff(b) != 1 {
                return Err(format!("phones that do not hear each other connected: {c}"));
            }
        }
        Ok(())
    }

    /// Two mixed groups edit apart, meet, split, edit apart again, and meet again: {A1, I1} (and L1, a Linux peer,
    /// when there is one) and {A2, I2}.
    async fn groups(&mut self) -> Result<()> {
        let mut left = vec![self.phone("A", 0)?, self.phone("I", 0)?];
        left.extend(self.linux.first().cloned());
        let right = [self.phone("A", 1)?, self.phone("I", 1)?];
        let all: Vec<&str> = left.iter().chain(&right).map(String::as_str).collect();
        let split = left.len();
        let mut apart = pairs(&all[..split]);
        apart.extend(pairs(&all[split..]));
        self.range(&apart).await?;
        self.open(&all).await?;
        let mut expected = BTreeMap::new();
        for round in 0..2 {
            let mut left = BTreeMap::new();
            let mut right = BTreeMap::new();
            for (i, p) in all.iter().enumerate() {
                let doc = format!("{p}-{round}");
                let text = self.text(&doc, 200);
                self.put(p, &doc, &text).await?;
                if i < split { &mut left } else { &mut right }.insert(doc, text);
            }
            // Apart, each group converges on its own notes.
            let mut l = expected.clone();
            l.extend(left.clone());
            let mut r = expected.clone();
            r.extend(right.clone());
            self.converge(&all[..split], &l).await?;
            self.converge(&all[split..], &r).await?;
            // Together (everyone hears everyone), they converge on all of them.
            self.range(&pairs(&all)).await?;
            expected.extend(left);
            expected.extend(right);
            self.converge(&all, &expected).await?;
            self.range(&apart).await?;
        }
        Ok(())
    }

    /// An Android phone and an iPhone that both dial each other at once end with one link and converge.
    async fn dial(&mut self) -> Result<()> {
        let (a, i) = (self.phone("A", 0)?, self.phone("I", 0)?);
        let pair = [a.as_str(), i.as_str()];
        // Out of range while both start; connections take 4 s to come up, longer than the core's dial grace (3 s)
        // after which a phone that waited for the other to dial dials too: so both dial.
        self.range(&[]).await?;
        self.control.ask(json!({"op": "latency", "connect_ms": 4000})).await.map_err(io)?;
        self.open(&pair).await?;
        let mut expected = BTreeMap::new();
        self.put_each(&pair, "dial", 200, &mut expected).await?;
        // Both scanning (Android delays a scan start beyond five in 30 s), then they meet.
        self.until("both phones scanning", || async {
            let t = self.control.traffic().await.map_err(io)?;
            let scanning = t["scanning"].as_array().cloned().unwrap_or_default();
            match pair.iter().all(|p| scanning.contains(&json!(p))) {
                true => Ok(Ok(())),
                false => Ok(Err(format!("scanning: {scanning:?}"))),
            }
        })
        .await?;
        self.range(&[(pair[0], pair[1])]).await?;
        self.converge(&pair, &expected).await?;
        let t = self.control.traffic().await.map_err(io)?;
        let dials = t["dials"].as_array().cloned().unwrap_or_default();
        if !dials.contains(&json!(format!("{a}>{i}"))) || !dials.contains(&json!(format!("{i}>{a}"))) {
            return Err(format!("not both dialled: {dials:?}"));
        }
        // The attempt that came second is cancelled once the first link's Hellos name the peer, or, had both
        // connections come up, the pair keeps the one whose central has the smaller tag and closes the other.
        self.links(1).await
    }

    /// A phone walks out of range mid-transfer; both write while apart; it comes back and they converge.
    async fn walk(&mut self) -> Result<()> {
        let (a, i) = (self.phone("A", 0)?, self.phone("I", 0)?);
        let pair = [a.as_str(), i.as_str()];
        // 40 KB each written apart, so that the transfers (both ways) start when they meet.
        self.range(&[]).await?;
        self.open(&pair).await?;
        let mut expected = BTreeMap::new();
        for n in 0..80 {
            let doc = format!("big-{n}");
            let text = self.text(&doc, 1000);
            self.put(pair[n % 2], &doc, &text).await?;
            expected.insert(doc, text);
        }
        let packets = |t: &Value| {
            let gatt = t["writes"].as_u64().unwrap_or(0) + t["notifications"].as_u64().unwrap_or(0);
            gatt + t["stream_bytes"].as_u64().unwrap_or(0) / 180
        };
        let before = packets(&self.control.traffic().await.map_err(io)?);
        self.range(&[(pair[0], pair[1])]).await?;
        // Out of range once some packets crossed (the handshake takes a few), before all 80 KB did: asking the air,
        // which answers at once.
        let leave_at = before + 30 + self.rng.below(40);
        self.until_every("the transfer starting", Duration::from_millis(5), || async {
            let n = packets(&self.control.traffic().await.map_err(io)?);
            if n >= leave_at {
                Ok(Ok(()))
            } else {
                Ok(Err(format!("{n} packets")))
            }
        })
        .await?;
        self.range(&[]).await?;
        let (away_a, away_i) = (self.notes(&a).await?, self.notes(&i).await?);
        if away_a.len() >= expected.len() && away_i.len() >= expected.len() {
            return Err("everything crossed before the phone walked away: nothing was cut".into());
        }
        self.put_each(&pair, "apart", 100, &mut expected).await?;
        self.range(&[(pair[0], pair[1])]).await?;
        self.converge(&pair, &expected).await
    }

    /// An attachment crosses three mixed hops (A–i–A–i), relayed; the far end gets the exact bytes.
    async fn attachment(&mut self) -> Result<()> {
        let line = [self.phone("A", 0)?, self.phone("I", 0)?, self.phone("A", 1)?, self.phone("I", 1)?];
        let l: Vec<&str> = line.iter().map(String::as_str).collect();
        self.range(&[(l[0], l[1]), (l[1], l[2]), (l[2], l[3])]).await?;
        self.open(&l).await?;
        let bytes: Vec<u8> = (0..48 * 1024).map(|_| self.rng.below(256) as u8).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        self.control.run(l[0], json!({"cmd": "attach", "doc": "f1", "bytes": b64})).await.map_err(io)?;
        let far = l[3];
        self.until("the attachment at the far end", || async {
            let answer = self.control.run(far, json!({"cmd": "attachment", "doc": "f1"})).await.map_err(io)?;
            match answer["bytes"].as_str() {
                Some(got) if got == b64 => Ok(Ok(())),
                Some(got) => Err(format!("{far} got different bytes ({} base64 characters)", got.len())),
                None => Ok(Err("not yet".into())),
            }
        })
        .await
    }

    /// A–i–i–A over GATT, the iPhones opted in to state restoration. The system ends both iPhone apps while every
    /// link is up (the stack keeps each one's links: the link between the iPhones at both ends, as central at one of
    /// them); the Android phones edit meanwhile. Launched again (I1 first), each iPhone's radio gets the earlier
    /// process's connections back (`willRestoreState`) and cancels those it is the central of (its core knows
    /// nothing of them); the peers end the others (the Service Changed indication of the re-published service, or
    /// the core's timeout), and the four converge on everything over new links.
    async fn restore(&mut self) -> Result<()> {
        let line = [self.phone("A", 0)?, self.phone("I", 0)?, self.phone("I", 1)?, self.phone("A", 1)?];
        let l: Vec<&str> = line.iter().map(String::as_str).collect();
        self.range(&[(l[0], l[1]), (l[1], l[2]), (l[2], l[3])]).await?;
        // GATT only: an L2CAP channel is the app's and closes with it, so its peer ends the link before the app
        // comes back (and whether anything is left to restore is a race).
        for p in &l {
            let restore = p.starts_with('I');
            self.control.run(p, json!({"cmd": "open", "l2cap": false, "restore": restore})).await.map_err(io)?;
            self.opened.push(p.to_string());
        }
        let mut expected = BTreeMap::new();
        self.put_each(&l, "before", 150, &mut expected).await?;
        self.converge(&l, &expected).await?;
        self.links(3).await?;
        let iphones = [l[1], l[2]];
        for p in iphones {
            self.control.run(p, json!({"cmd": "terminate"})).await.map_err(io)?;
        }
        self.put_each(&[l[0], l[3]], "meanwhile", 150, &mut expected).await?;
        for p in iphones {
            self.control.run(p, json!({"cmd": "launch"})).await.map_err(io)?;
        }
        // Every link of the earlier processes was handed back: I1 both of its links; I2 its link with A2, and the
        // one with I1 unless I1 (its central) cancelled it before I2 came back. One of the two had that one as
        // central.
        let mut central = 0;
        let mut restored = Vec::new();
        for p in iphones {
            let r = self.control.run(p, json!({"cmd": "restored"})).await.map_err(io)?;
            let n = r["central"].as_u64().unwrap_or(0);
            central += n;
            restored.push(n + r["peripheral"].as_u64().unwrap_or(0));
        }
        if restored[0] != 2 || !(1..=2).contains(&restored[1]) || central == 0 {
            return Err(format!(
                "restored {restored:?} links ({central} as central), expected 2 and 1 or 2 (at least 1 as central)"
            ));
        }
        self.put_each(&iphones, "after", 150, &mut expected).await?;
        self.converge(&l, &expected).await?;
        // None of the restored links is left, and the radios cancelled every one they were the central of.
        self.until("the restored links closed", || async {
            let mut open = 0;
            for p in iphones {
                let r = self.control.run(p, json!({"cmd": "restored"})).await.map_err(io)?;
                open += r["open"].as_u64().unwrap_or(0);
                let (central, cancelled) = (r["central"].as_u64(), r["cancelled"].as_u64());
                if central != cancelled {
                    return Err(format!("{p}'s radio cancelled {cancelled:?} of the {central:?} restored connections"));
                }
            }
            match open {
                0 => Ok(Ok(())),
                n => Ok(Err(format!("{n} restored links still up"))),
            }
        })
        .await?;
        self.links(3).await
    }

    /// An Android phone cannot discover a backgrounded iPhone, but the iPhone (scanning for the service) finds it and
    /// reconnects after they were apart.
    async fn background(&mut self) -> Result<()> {
        let (a, i) = (self.phone("A", 0)?, self.phone("I", 0)?);
        let pair = [a.as_str(), i.as_str()];
        self.range(&[]).await?;
        self.control.ask(json!({"op": "app_state", "phone": i, "background": true})).await.map_err(io)?;
        self.open(&pair).await?;
        let mut expected = BTreeMap::new();
        for round in 0..2 {
            self.put_each(&pair, &round.to_string(), 150, &mut expected).await?;
            self.range(&[(pair[0], pair[1])]).await?;
            self.converge(&pair, &expected).await?;
            self.range(&[]).await?;
        }
        let connections = self.connections().await?;
        let by_android = format!("{a}>{i}");
        if connections.contains(&by_android) {
            return Err(format!("the Android phone connected to the backgrounded iPhone: {connections:?}"));
        }
        if !connections.contains(&format!("{i}>{a}")) {
            return Err(format!("the iPhone never connected: {connections:?}"));
        }
        Ok(())
    }
}

/// Every pair of `phones`.
fn pairs<'a>(phones: &[&'a str]) -> Vec<(&'a str, &'a str)> {
    phones.iter().enumerate().flat_map(|(i, a)| phones[i + 1..].iter().map(move |b| (*a, *b))).collect()
}
