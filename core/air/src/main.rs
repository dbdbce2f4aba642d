//! `shoal-air`: the simulated Bluetooth LE air (see PROTOCOL.md).
//!
//! ```text
//! shoal-air serve [--port P] [--port-file F] [--seed S]
//!     serves the air on 127.0.0.1 until killed; F receives the port once it listens
//! shoal-air mesh --phone NAME=COMMAND ... [--seeds N] [--only SCENARIO] [--logs DIR] [--timeout SECONDS]
//!     starts the phones (COMMAND ADDRESS NAME), runs the mesh scenarios, prints a JSON line per run, exits 1 on
//!     the first failure. Android phones are named A…, iPhones I…, Linux peers L…; the scenarios need A1..A3
//!     and I1..I2 (and use L1 if given).
//! shoal-air linux-phone ADDRESS NAME
//!     a Linux peer's phone program on the air at ADDRESS (the core over a radio for the air; see linux.rs)
//! ```
//! `SHOAL_AIR_LOG=info` (or `debug`, `warn`) logs to standard error.

use shoaldb_air::mesh::{self, MeshOptions, PhoneProgram};
use std::time::Duration;

struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            eprintln!("[air {} {}] {}", r.level(), r.target(), r.args());
        }
    }
    fn flush(&self) {}
}

fn usage() -> ! {
    eprintln!(
        "usage: shoal-air serve [--port P] [--port-file F] [--seed S]\n       \
         shoal-air mesh --phone NAME=COMMAND ... [--seeds N] [--only SCENARIO] [--logs DIR] [--timeout SECONDS]\n       \
         shoal-air linux-phone ADDRESS NAME\n\
         scenarios: {}",
        mesh::SCENARIOS.join(", ")
    );
    std::process::exit(2)
}

fn main() {
    let level = std::env::var("SHOAL_AIR_LOG").ok().and_then(|l| l.parse().ok()).unwrap_or(log::LevelFilter::Warn);
    if log::set_logger(&StderrLogger).is_ok() {
        log::set_max_level(level);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else { usage() };
    if command == "linux-phone" {
        let [_, address, name] = &args[..] else { usage() };
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
        let outcome = match runtime {
            Ok(r) => r.block_on(shoaldb_air::linux::run(address, name)),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = outcome {
            eprintln!("shoal-air linux-phone {name}: {e}");
            std::process::exit(1);
        }
        return;
    }
    let mut flags: Vec<(String, String)> = Vec::new();
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let Some(value) = rest.next() else { usage() };
        flags.push((flag.clone(), value.clone()));
    }
    let get = |name: &str| flags.iter().rev().find(|(f, _)| f == name).map(|(_, v)| v.clone());
    let number =
        |name: &str, default: u64| get(name).map_or(Some(default), |v| v.parse().ok()).unwrap_or_else(|| usage());
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shoal-air: {e}");
            std::process::exit(1)
        }
    };
    let outcome: Result<(), String> = match command.as_str() {
        "serve" => runtime.block_on(async {
            let port = u16::try_from(number("--port", 0)).unwrap_or_else(|_| usage());
            let server = shoaldb_air::server::serve(port, number("--seed", 0)).await.map_err(|e| e.to_string())?;
            if let Some(file) = get("--port-file") {
                // Written whole, then renamed: a reader never sees half a port.
                let tmp = format!("{file}.tmp");
                std::fs::write(&tmp, server.address.port().to_string()).map_err(|e| e.to_string())?;
                std::fs::rename(&tmp, &file).map_err(|e| e.to_string())?;
            }
            println!("listening {}", server.address);
            server.task.await.map_err(|e| e.to_string())
        }),
        "mesh" => {
            let phones: Vec<PhoneProgram> = flags
                .iter()
                .filter(|(f, _)| f == "--phone")
                .map(|(_, v)| match v.split_once('=') {
                    Some((name, command)) => PhoneProgram { name: name.to_owned(), command: command.to_owned() },
                    None => usage(),
                })
                .collect();
            let options = MeshOptions {
                phones,
                seeds: number("--seeds", 3),
                only: get("--only"),
                log_dir: get("--logs").unwrap_or_else(|| "target/air-mesh".into()).into(),
                converge_timeout: Duration::from_secs(number("--timeout", 90)),
            };
            runtime.block_on(mesh::run(options))
        }
        _ => usage(),
    };
    if let Err(e) = outcome {
        eprintln!("shoal-air: {e}");
        std::process::exit(1);
    }
}
