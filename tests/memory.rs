//! The daemon's memory follows the inodes the kernel holds: it grows while `ls -l` makes the
//! kernel hold a node for every file of a big directory, and goes back to the system once
//! the kernel forgets them.

mod common;

use common::*;
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

/// Resident set size of the daemon processes, in bytes.
fn daemon_rss(pids: &[i32]) -> u64 {
    daemon_counter(pids, "status", "VmRSS:") * 1024
}

const FILES: usize = 40_000;

#[test]
fn memory_returns_after_the_kernel_forgets_the_inodes() {
    require_root();
    let env = TestEnv::new("memory");
    let layers = [env.layer("base"), env.layer("mid"), env.layer("top")];
    for l in &layers {
        l.dir("many");
    }
    for i in 0..FILES {
        // Names past the inline length too (they are allocated apart).
        let name = match i % 4 {
            0 => format!("many/a-rather-long-file-name-{i:06}"),
            _ => format!("many/f{i:06}"),
        };
        fs::write(layers[i % 3].path(&name), "").unwrap();
    }
    let stack = env.stack(&[&layers[2], &layers[1], &layers[0]]);
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    let pids = m.daemon_pids().to_vec();
    forget_kernel_inodes();
    let before = daemon_rss(&pids);

    let out = run_ok(
        Command::new("ls").arg("-l").arg(m.join("many")),
        Duration::from_secs(300),
    );
    let listed = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(listed, FILES + 1, "ls -l lines (with the total)");
    let held = daemon_rss(&pids);
    let grown = held.saturating_sub(before);
    // A node per file the kernel holds: if the daemon kept nothing per inode, this test could
    // not show memory coming back.
    assert!(
        grown >= (FILES as u64) * 100,
        "daemon grew only {grown} B for {FILES} inodes held by the kernel"
    );

    forget_kernel_inodes();
    let limit = before + grown / 4;
    let start = Instant::now();
    let mut now = daemon_rss(&pids);
    while now > limit && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        forget_kernel_inodes();
        now = daemon_rss(&pids);
    }
    assert!(
        now <= limit,
        "daemon RSS {now} B after the kernel forgot the inodes: {before} B before the listing, \
         {held} B while held"
    );
    // And the union still works after forgetting everything.
    assert_eq!(
        fs::read_dir(m.join("many")).unwrap().count(),
        FILES,
        "entries after the forget"
    );
    drop(m);
    stack.assert_layers_unchanged();
}
