//! Structured logs for the relays: one JSON object per line on stderr (`ts` in ms since the Unix epoch, `level`,
//! `target`, `msg`), which log collectors read as they are. The level comes from `SHOAL_LOG` (`off`, `error`,
//! `warn`, `info`, `debug`, `trace`; `info` by default); other crates' messages show at `warn` and above unless it
//! is `debug` or `trace`.

use log::{LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

struct JsonLogger {
    level: LevelFilter,
}

impl Log for JsonLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let ours = metadata.target().starts_with("shoal");
        metadata.level() <= self.level
            && (ours || self.level >= LevelFilter::Debug || metadata.level() <= log::Level::Warn)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let line = serde_json::json!({
            "ts": ts,
            "level": record.level().as_str().to_lowercase(),
            "target": record.target(),
            "msg": record.args().to_string(),
        });
        // A closed stderr must not take the relay down.
        let _ = writeln!(std::io::stderr().lock(), "{line}");
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Install the JSON-lines logger (once; later calls change nothing).
pub fn init() {
    let level = std::env::var("SHOAL_LOG").ok().and_then(|v| v.parse().ok()).unwrap_or(LevelFilter::Info);
    if log::set_boxed_logger(Box::new(JsonLogger { level })).is_ok() {
        log::set_max_level(level);
    }
}
