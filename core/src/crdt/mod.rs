//! The data types and their merge rules: pure values and functions, no I/O, no SQLite, no async.
//!
//! - [`clock`]: peer ids, dots, the hybrid logical clock;
//! - [`version`]: version vectors;
//! - [`value`]: scalars, attachment tokens, typed values;
//! - [`register`], [`counter`], [`map`], [`sequence`]: the field types;
//! - [`field`]: one field holding its CRDTs, and the removal rule;
//! - [`change`]: operations and changes, the unit of replication;
//! - [`document`]: a document, local editing and merging;
//! - [`tombstones`]: which deletions a stable frontier may not cover yet, and dropping the tombstones it settles.

pub mod change;
pub mod clock;
pub(crate) mod counter;
pub mod document;
pub(crate) mod field;
pub(crate) mod json;
pub(crate) mod map;
pub mod path;
pub(crate) mod register;
pub mod sequence;
pub mod tombstones;
pub mod value;
pub mod version;
