//! Forwards the core's `log` records to a logger the app provides (logcat, OSLog, its own).

use shoaldb::util::{read, write};
use std::sync::{Arc, OnceLock, RwLock};

/// Severity of a log message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// Where Shoal's log messages go. The Android library provides `LogcatLogger`, the Swift package an OSLog logger.
#[uniffi::export(foreign)]
pub trait ShoalLogger: Send + Sync {
    /// One message. `target` is the Rust module it comes from, e.g. `shoaldb::sync::engine`. Called on any
    /// thread; must not call back into Shoal.
    fn log(&self, level: LogLevel, target: String, message: String);
}

struct Forwarder {
    target: RwLock<Option<Arc<dyn ShoalLogger>>>,
}

impl log::Log for Forwarder {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let logger = read(&self.target).clone();
        if let Some(logger) = logger {
            let level = match record.level() {
                log::Level::Error => LogLevel::Error,
                log::Level::Warn => LogLevel::Warn,
                log::Level::Info => LogLevel::Info,
                log::Level::Debug => LogLevel::Debug,
                log::Level::Trace => LogLevel::Trace,
            };
            logger.log(level, record.target().to_string(), record.args().to_string());
        }
    }

    fn flush(&self) {}
}

static FORWARDER: OnceLock<&'static Forwarder> = OnceLock::new();

/// Send Shoal's log messages of `level` and more severe to `logger` (replacing any logger set before). Process
/// wide. If the process already installed another Rust logger, Shoal's messages go there instead.
#[uniffi::export]
pub fn set_logger(logger: Arc<dyn ShoalLogger>, level: LogLevel) {
    let forwarder = *FORWARDER.get_or_init(|| {
        let f: &'static Forwarder = Box::leak(Box::new(Forwarder { target: RwLock::new(None) }));
        if log::set_logger(f).is_err() {
            eprintln!("shoal: another logger is already installed; Shoal's messages go to it");
        }
        f
    });
    *write(&forwarder.target) = Some(logger);
    log::set_max_level(match level {
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    });
}
