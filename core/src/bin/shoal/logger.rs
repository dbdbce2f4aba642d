//! A minimal logger: lines to stderr, the level from `SHOAL_LOG` (`off`, `error`, `warn`, `info`, `debug`,
//! `trace`). Messages of other crates (mDNS, …) are shown at `warn` and above unless `SHOAL_LOG` is `debug` or
//! `trace`.

use log::{LevelFilter, Log, Metadata, Record};
use std::io::Write;

struct StderrLogger {
    level: LevelFilter,
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        let ours = metadata.target().starts_with("shoal");
        metadata.level() <= self.level
            && (ours || self.level >= LevelFilter::Debug || metadata.level() <= log::Level::Warn)
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            // A closed stderr must not take the program down.
            let _ =
                writeln!(std::io::stderr().lock(), "[{}] {}", record.level().as_str().to_lowercase(), record.args());
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// Install the logger: the level from `SHOAL_LOG`, or `default` when it is unset or not a level.
pub fn init(default: LevelFilter) {
    let level = std::env::var("SHOAL_LOG").ok().and_then(|v| v.trim().parse::<LevelFilter>().ok()).unwrap_or(default);
    // Installed once per process, for its whole life.
    let logger: &'static StderrLogger = Box::leak(Box::new(StderrLogger { level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
