//! The daemon's memory follows the inodes the kernel holds: it grows while `ls -l` makes the
//! kernel hold a node for every file of a big directory, and goes back to the system once
//! the kernel forgets them. Its descriptor table is grown once, before it serves.

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

/// Slots the daemon's descriptor table has from the start (`FD_TABLE_SLOTS` in `mount`).
const FD_TABLE_SLOTS: u64 = 16384;

/// A field of `/proc/PID/FILE` of one process, as a number.
fn proc_field(pid: i32, file: &str, field: &str) -> u64 {
    daemon_counter(&[pid], file, field)
}

/// The soft open-file limit of process `pid`.
fn open_file_limit(pid: i32) -> u64 {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a Max open files line");
    let soft = line["Max open files".len()..].split_whitespace().next();
    soft.and_then(|v| v.parse().ok()).unwrap_or(u64::MAX)
}

/// The daemon grows its descriptor table before its threads start: a table that threads
/// share waits for an RCU grace period each time it doubles, and so does the request that
/// opens the descriptor (a cold `find` of a Debian image took half as long again). A walk
/// that makes the daemon hold more descriptors than a new process's table has room for (64)
/// finds the table already big, and leaves it as it was.
#[test]
fn the_descriptor_table_is_grown_before_the_daemon_serves() {
    require_root();
    let env = TestEnv::new("fdtable");
    let base = env.layer("base");
    let top = env.layer("top");
    for i in 0..150 {
        base.dir(format!("d{i:03}/sub"));
        top.dir(format!("d{i:03}"));
    }
    let stack = env.stack(&[&top, &base]);
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    let pids = m.daemon_pids().to_vec();
    let before: Vec<u64> = pids
        .iter()
        .map(|&pid| proc_field(pid, "status", "FDSize:"))
        .collect();
    for (&pid, &slots) in pids.iter().zip(&before) {
        let want = FD_TABLE_SLOTS.min(open_file_limit(pid));
        assert!(
            slots >= want,
            "daemon {pid}: {slots} descriptor slots once mounted, want {want}"
        );
    }
    // Every directory is looked up in both layers: the daemon holds a descriptor for each.
    let out = run_ok(Command::new("find").arg(m.path()), Duration::from_secs(60));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1 + 150 * 2,
        "entries found"
    );
    let held: usize = pids
        .iter()
        .map(|pid| fs::read_dir(format!("/proc/{pid}/fd")).unwrap().count())
        .sum();
    assert!(
        held > 64,
        "the walk left the daemon holding only {held} descriptors: it shows nothing"
    );
    let after: Vec<u64> = pids
        .iter()
        .map(|&pid| proc_field(pid, "status", "FDSize:"))
        .collect();
    assert_eq!(after, before, "descriptor slots before and after the walk");
    drop(m);
    stack.assert_layers_unchanged();
}
