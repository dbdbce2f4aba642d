//! Shared pieces of the Shoal benchmark programs (`trace_bench`, `write_bench`).

pub mod alloc;

/// Print one JSON row on stdout and flush it at once.
pub fn emit(row: &serde_json::Value) {
    use std::io::Write;
    let out = std::io::stdout();
    let mut out = out.lock();
    let _ = writeln!(out, "{row}");
    let _ = out.flush();
}
