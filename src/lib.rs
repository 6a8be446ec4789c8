#![deny(missing_docs)]
//! stratafs: a userspace union filesystem over FUSE, as a library for test
//! code and tools.
//!
//! [`Mount`] gives a throwaway writable view of read-only fixture
//! directories (or of a stored image), served by threads of the calling
//! process and unmounted when dropped, even while a test panics:
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mnt = stratafs::Mount::builder()
//!     .lower("tests/fixtures")      // top first, repeatable
//!     .ephemeral_upper()            // or .upper(dir).work(dir)
//!     .mount_temp()?;               // or .mount_at(path)
//! std::fs::write(mnt.path().join("x"), b"...")?;
//! let changes = mnt.diff()?;        // what `stratafs diff` prints
//! assert_eq!(changes[0].to_string(), "A /x");
//! drop(mnt);                        // unmounts, removes the temporary upper
//! # Ok(()) }
//! ```
//!
//! It needs `/dev/fuse` (and `fusermount3`, package fuse3, when not root).
//! Several mounts may live at once, from parallel tests. A runnable program:
//! `examples/fixture_view.rs`.
//!
//! [`store`] is the content-addressed layer store (import, verify, export,
//! images) and [`changeset`] computes and commits what an upper layer
//! changed. The other modules are the filesystem's internals (hidden here):
//! `mount` builds a session, `fuse` adapts kernel requests, `union` merges
//! layers, `layer` reads one layer, `sys` holds the only `unsafe` code.

pub mod changeset;
#[doc(hidden)]
pub mod fuse;
#[doc(hidden)]
pub mod layer;
#[doc(hidden)]
pub mod mount;
pub mod store;
#[doc(hidden)]
pub mod sys;
#[doc(hidden)]
pub mod union;

pub use mount::{Mount, MountBuilder};
