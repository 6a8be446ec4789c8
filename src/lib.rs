//! stratafs: a userspace union filesystem over FUSE.
//!
//! Layers flow top to bottom: `mount` builds a session, `fuse` adapts kernel
//! requests, `union` merges layers, `layer` reads one layer, `sys` holds the
//! only `unsafe` code.

pub mod changeset;
pub mod fuse;
pub mod layer;
pub mod mount;
pub mod store;
pub mod sys;
pub mod union;

pub use mount::{Mount, MountBuilder};
