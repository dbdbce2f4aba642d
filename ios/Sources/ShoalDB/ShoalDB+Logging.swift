// Where Shoal's log messages go: OSLog on Apple platforms, stderr elsewhere, or a closure.

import Foundation
#if canImport(os)
import os
#endif

/// Library-wide entry points of Shoal.
public enum Shoal {
    /// The version of the Shoal library (the Rust core inside this package).
    public static var version: String { shoalVersion() }

    /// Send Shoal's messages of `level` and more severe to the platform's log: `OSLogLogger` (unified logging,
    /// subsystem `dev.shoaldb`) on Apple platforms, `StderrLogger` elsewhere. Process wide; replaces any logger
    /// set before.
    public static func installDefaultLogger(level: LogLevel = .info) {
        #if canImport(os)
        if #available(iOS 14.0, macOS 11.0, tvOS 14.0, watchOS 7.0, *) {
            setLogger(logger: OSLogLogger(), level: level)
        } else {
            setLogger(logger: StderrLogger(), level: level)
        }
        #else
        setLogger(logger: StderrLogger(), level: level)
        #endif
    }

    /// Send Shoal's messages of `level` and more severe to `handler(level, target, message)`. `handler` runs on
    /// any thread and must not call back into Shoal. Process wide; replaces any logger set before.
    public static func setLogHandler(
        level: LogLevel = .info,
        _ handler: @escaping @Sendable (LogLevel, String, String) -> Void
    ) {
        setLogger(logger: ClosureLogger(handler), level: level)
    }
}

/// A logger calling a closure.
private final class ClosureLogger: ShoalLogger {
    private let handler: @Sendable (LogLevel, String, String) -> Void

    init(_ handler: @escaping @Sendable (LogLevel, String, String) -> Void) {
        self.handler = handler
    }

    func log(level: LogLevel, target: String, message: String) {
        handler(level, target, message)
    }
}

/// Writes Shoal's messages to standard error, one line each: `shoal WARN shoaldb::sync: message`.
public final class StderrLogger: ShoalLogger {
    /// A logger writing to standard error.
    public init() {}

    /// Writes one message (errors writing are ignored).
    public func log(level: LogLevel, target: String, message: String) {
        let line = "shoal \(level.label) \(target): \(message)\n"
        try? FileHandle.standardError.write(contentsOf: Data(line.utf8))
    }
}

extension LogLevel {
    /// The level's name in capitals, as log lines show it (`ERROR` … `TRACE`).
    public var label: String {
        switch self {
        case .error: return "ERROR"
        case .warn: return "WARN"
        case .info: return "INFO"
        case .debug: return "DEBUG"
        case .trace: return "TRACE"
        }
    }
}

#if canImport(os)
/// Writes Shoal's messages to the unified logging system (Console.app, `log stream`), with subsystem
/// `subsystem` and the Rust module as the category (e.g. `shoaldb::sync::engine`). Messages are logged as
/// public: they hold ids and addresses, not document contents. Levels map to `error`, `warning`, `info`,
/// `debug` and `trace`.
@available(iOS 14.0, macOS 11.0, tvOS 14.0, watchOS 7.0, *)
public final class OSLogLogger: ShoalLogger, @unchecked Sendable {
    /// The subsystem of every message.
    public let subsystem: String
    private let lock = NSLock()
    private var loggers: [String: os.Logger] = [:]

    /// A logger writing to the unified logging system under `subsystem`.
    public init(subsystem: String = "dev.shoaldb") {
        self.subsystem = subsystem
    }

    /// Writes one message.
    public func log(level: LogLevel, target: String, message: String) {
        let logger = self.logger(for: target)
        switch level {
        case .error: logger.error("\(message, privacy: .public)")
        case .warn: logger.warning("\(message, privacy: .public)")
        case .info: logger.info("\(message, privacy: .public)")
        case .debug: logger.debug("\(message, privacy: .public)")
        case .trace: logger.trace("\(message, privacy: .public)")
        }
    }

    private func logger(for category: String) -> os.Logger {
        lock.lock()
        defer { lock.unlock() }
        if let logger = loggers[category] { return logger }
        let logger = os.Logger(subsystem: subsystem, category: category)
        loggers[category] = logger
        return logger
    }
}
#endif
