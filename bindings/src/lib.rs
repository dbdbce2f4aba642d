//! The UniFFI surface of `shoaldb` lands here with the bindings issue; for now it only re-exports the core so the
//! workspace layout is final.
pub use shoaldb;
