//! Shared harness for the stratafs integration tests.
//!
//! Every test gets a fresh [`TestEnv`] (a temp dir, removed on drop), builds [`Layer`]s, makes a
//! [`Stack`] of them (which snapshots the layers and verifies on drop that they are untouched),
//! and mounts it with stratafs ([`StratafsMount`]) and/or kernel overlayfs ([`KernelOverlay`]),
//! both RAII guards that unmount even when the test panics.
//!
//! Environment: `STRATAFS_TEST_BIN` runs the suite against another binary with the same CLI;
//! `STRATAFS_TEST_KEEP=1` keeps the temp dirs.
#![allow(dead_code, unused_imports)]

pub mod convert;
pub mod debian;
pub mod differential;
pub mod dropin;
pub mod env;
pub mod layer;
pub mod mounts;
pub mod oci;
pub mod ops;
pub mod oracle;
pub mod rw;
pub mod snapshot;
pub mod sys;
pub mod unpriv;

pub use env::*;
pub use layer::*;
pub use mounts::*;
pub use ops::*;
pub use oracle::*;
pub use rw::*;
pub use snapshot::*;
pub use sys::*;
pub use unpriv::*;

/// Panics (with an explanation) unless the test runs as root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "the stratafs integration tests must run as root (use scripts/test.sh)"
    );
}
