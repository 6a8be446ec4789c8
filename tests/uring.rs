//! FUSE over io_uring: with the kernel's `fuse.enable_uring` on, requests reach the daemon
//! through one io_uring queue per CPU instead of /dev/fuse. The whole suite runs a second
//! time with it on (`.ci/run`); these tests show that the queues really carry the requests,
//! that a mount let go before they are up ends cleanly, and that asking for them where the
//! kernel offers none fails the mount cleanly.

mod common;

use common::sys::{lgetxattr, lsetxattr};
use common::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::PathBuf;
use std::time::Duration;

const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// The kernel's switch, if it has FUSE over io_uring at all.
fn uring_param() -> Option<bool> {
    fs::read_to_string(PARAM).ok().map(|v| v.trim() == "Y")
}

/// Whether the switch is on; the suite's second pass (`.ci/run`) turns it on. A test does not
/// flip it: on, the rest of a /dev/fuse pass would use the queues; off, live mounts' queues
/// would be refused.
fn uring_on() -> bool {
    match uring_param() {
        Some(true) => true,
        Some(false) => {
            eprintln!("SKIP: fuse.enable_uring is off (the suite's second pass turns it on)");
            false
        }
        None => {
            eprintln!("SKIP: this kernel has no FUSE over io_uring ({PARAM})");
            false
        }
    }
}

/// Per thread of the daemon's processes: its name and how often it has slept
/// (`voluntary_ctxt_switches`).
fn thread_wakeups(pids: &[i32]) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let tasks = pids.iter().flat_map(|pid| {
        fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
    });
    for t in tasks {
        let t = t.unwrap().path();
        let (Ok(comm), Ok(status)) = (
            fs::read_to_string(t.join("comm")),
            fs::read_to_string(t.join("status")),
        ) else {
            continue;
        };
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.push((comm.trim().to_string(), switches));
    }
    out
}

fn ring_wakeups(pids: &[i32]) -> u64 {
    thread_wakeups(pids)
        .iter()
        .filter(|(name, _)| name.starts_with("ring-"))
        .map(|(_, n)| n)
        .sum()
}

fn possible_cpus() -> usize {
    let list = fs::read_to_string("/sys/devices/system/cpu/possible").unwrap();
    let last: usize = list
        .trim()
        .rsplit([',', '-'])
        .next()
        .unwrap()
        .parse()
        .unwrap();
    last + 1
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(salt) ^ (i >> 11) as u8)
        .collect()
}

/// A writable mount of `stack` with `--uring on`, and its upper directory.
fn mount_uring<'a>(env: &TestEnv, stack: &'a Stack<'_>) -> (StratafsMount<'a>, PathBuf) {
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let mnt = env.fresh_dir("mnt/u");
    let spec = UpperSpec::new(&upper, &work);
    let mut cmd = mount_command_with(&stack.lowers, Some(&spec), &mnt, true);
    cmd.args(["--uring", "on"]);
    let m = StratafsMount::start_command(cmd, &mnt, &env.root.join("u.log"), MountMode::Foreground)
        .unwrap_or_else(|e| panic!("mount with --uring on failed: {e}"));
    (m, upper)
}

/// With `--uring on`, queue threads run for every possible CPU and the requests of a mixed
/// workload (a 3000-entry listing, a 3 MiB lower file, xattrs, a 5 MiB file written, synced,
/// and read back after the caches are dropped, renames, removals, then 500 first lookups)
/// wake those threads: the requests travel through the rings, and every answer is right.
#[test]
fn requests_travel_through_the_io_uring_queues() {
    require_root();
    if !uring_on() {
        return;
    }
    let env = TestEnv::new("uring-io");
    let base = env.layer("base");
    let big = pattern(3 << 20, 5);
    base.file("big", &big);
    base.file("tagged", b"t").xattr("user.k", b"value of k");
    for i in 0..3000 {
        base.file(format!("many/f{i:04}"), format!("{i}"));
    }
    let stack = env.stack(&[&base]);
    let (m, upper) = mount_uring(&env, &stack);
    let pids = m.daemon_pids().to_vec();
    let rings = || -> Vec<String> {
        thread_wakeups(&pids)
            .into_iter()
            .map(|(n, _)| n)
            .filter(|n| n.starts_with("ring-"))
            .collect()
    };
    // A foreground mount shows in /proc/mounts before its handshake: the queues follow.
    let every_cpu = |rings: &[String]| {
        (0..possible_cpus()).all(|cpu| rings.iter().any(|r| r.starts_with(&format!("ring-{cpu}."))))
    };
    wait_until(Duration::from_secs(20), || every_cpu(&rings()));
    assert!(
        every_cpu(&rings()),
        "not every possible CPU's queue has a thread: {:?}",
        rings()
    );
    let before = ring_wakeups(&pids);

    let mut names: Vec<String> = fs::read_dir(m.join("many"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3000);
    assert_eq!(names[1234], "f1234");
    assert_eq!(fs::read(m.join("many/f2999")).unwrap(), b"2999");
    assert!(
        fs::read(m.join("big")).unwrap() == big,
        "lower file read wrong"
    );
    assert_eq!(
        lgetxattr(&m.join("tagged"), b"user.k").unwrap(),
        b"value of k"
    );

    let new = pattern(5 << 20, 9);
    let mut f = fs::File::create(m.join("new")).unwrap();
    f.write_all(&new).unwrap();
    f.write_all_at(b"patched", 4096).unwrap();
    f.sync_all().unwrap();
    drop(f);
    lsetxattr(&m.join("new"), b"user.n", b"nv").unwrap();
    fs::rename(m.join("new"), m.join("renamed")).unwrap();
    fs::remove_file(m.join("many/f0007")).unwrap();
    fs::create_dir(m.join("made")).unwrap();
    drop_kernel_caches();
    let mut expect = new.clone();
    expect[4096..4096 + 7].copy_from_slice(b"patched");
    assert!(
        fs::read(m.join("renamed")).unwrap() == expect,
        "written file read back wrong"
    );
    assert_eq!(lgetxattr(&m.join("renamed"), b"user.n").unwrap(), b"nv");
    assert!(!m.join("many/f0007").exists());
    assert!(m.join("made").is_dir());
    assert!(
        fs::read(upper.join("renamed")).unwrap() == expect,
        "upper copy differs"
    );

    // 500 first lookups, one request each, one after the other: each wakes a queue thread.
    drop_kernel_caches();
    for i in 10..510 {
        assert_eq!(
            fs::symlink_metadata(m.join(format!("many/f{i:04}")))
                .unwrap()
                .len(),
            format!("{i}").len() as u64
        );
    }
    let served = ring_wakeups(&pids) - before;
    assert!(
        served >= 500,
        "the queue threads woke {served} times for a workload of more than 500 requests"
    );
    m.unmount();
    stack.assert_layers_unchanged();
}

/// On the queues, as root, a lower file of a writable mount opened for reading is read by the
/// kernel itself (8 MiB read through the mount: the daemon's `rchar` stays under 1 MiB). A
/// write-open while a reader holds it copies it up and gives its name a new kernel inode (the
/// old one stays bound to the lower file for its open handles): the writer's open succeeds,
/// every later open and the upper layer see the new data, the old handle still reads, and the
/// inode number of the name, of the old handle and of a new handle stays the same. Once every
/// handle is closed a new one is served from the copy, again by the kernel.
#[test]
fn lower_files_are_read_by_the_kernel_and_copied_up_while_open() {
    require_root();
    if !uring_on() {
        return;
    }
    let env = TestEnv::new("uring-lowerpt");
    let base = env.layer("base");
    let big = pattern(8 << 20, 3);
    base.file("big", &big);
    base.file("f", "lower data\n");
    let stack = env.stack(&[&base]);
    let (m, upper) = mount_uring(&env, &stack);
    let pids = m.daemon_pids().to_vec();
    let rchar = || daemon_io(&pids).0;

    let before = rchar();
    assert!(
        fs::read(m.join("big")).unwrap() == big,
        "lower file read wrong"
    );
    let read = rchar() - before;
    assert!(
        read < 1 << 20,
        "the daemon read {read} B of an 8 MiB lower file itself"
    );

    let ino = fs::metadata(m.join("f")).unwrap().ino();
    let reader = fs::File::open(m.join("f")).unwrap();
    let mut head = vec![0u8; 5];
    reader.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, b"lower");
    let writer = fs::OpenOptions::new()
        .write(true)
        .open(m.join("f"))
        .unwrap_or_else(|e| panic!("write-open of a lower file open for reading: {e}"));
    writer.write_all_at(b"UPPER", 0).unwrap();
    drop(writer);
    assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "UPPER data\n");
    assert_eq!(fs::read_to_string(upper.join("f")).unwrap(), "UPPER data\n");
    // The old handle still reads, the lower file it was opened on.
    reader.read_exact_at(&mut head, 0).unwrap();
    assert_eq!(head, b"lower", "a handle opened before the copy-up");
    let fresh = fs::File::open(m.join("f")).unwrap();
    assert_eq!(
        (
            fs::metadata(m.join("f")).unwrap().ino(),
            reader.metadata().unwrap().ino(),
            fresh.metadata().unwrap().ino()
        ),
        (ino, ino, ino),
        "inode numbers of the name, the old handle and a new one"
    );
    drop(fresh);
    drop(reader);

    let before = rchar();
    let mut a = fs::OpenOptions::new()
        .append(true)
        .open(m.join("f"))
        .unwrap();
    a.write_all(b"more\n").unwrap();
    drop(a);
    assert_eq!(
        fs::read_to_string(m.join("f")).unwrap(),
        "UPPER data\nmore\n"
    );
    assert!(
        rchar() - before < 4096,
        "the daemon served the copy's data itself"
    );
    assert_eq!(
        fs::read_to_string(upper.join("f")).unwrap(),
        "UPPER data\nmore\n"
    );
    m.unmount();
    stack.assert_layers_unchanged();
}

/// A lower layer on a file system the kernel will not take backing files from (here a kernel
/// overlayfs mount: passthrough cannot stack on it) has its files read through the daemon and
/// the page cache, and that refusal leaves the upper layer's files passed through: a new 4 MiB
/// file written and read back after the caches are dropped moves through the kernel, not the
/// daemon.
#[test]
fn a_lower_layer_the_kernel_cannot_back_leaves_upper_files_passed_through() {
    require_root();
    if !uring_on() {
        return;
    }
    let env = TestEnv::new("uring-stacked");
    let base = env.layer("base");
    let lower_data = pattern(2 << 20, 9);
    base.file("f", &lower_data);
    let top = env.layer("top");
    top.file("g", "g\n");
    // (A lowerdir-only overlay takes two layers at least.)
    let inner = env.stack(&[&top, &base]);
    let k = inner.kernel();
    let stack = env.stack_paths(vec![k.mnt.clone()]);
    let (m, upper) = mount_uring(&env, &stack);
    let pids = m.daemon_pids().to_vec();
    let io = || daemon_io(&pids);
    assert!(
        fs::read(m.join("f")).unwrap() == lower_data,
        "lower file read wrong"
    );

    let before = io();
    let new_data = pattern(4 << 20, 4);
    let f = fs::File::create(m.join("new")).unwrap();
    f.write_all_at(&new_data, 0).unwrap();
    f.sync_all().unwrap();
    drop(f);
    drop_kernel_caches();
    assert!(
        fs::read(m.join("new")).unwrap() == new_data,
        "new file read wrong"
    );
    let after = io();
    let (read, written) = (after.0 - before.0, after.1 - before.1);
    assert!(
        read < 1 << 20 && written < 1 << 20,
        "after a lower file was refused, the daemon moved an upper file's data itself: \
         read {read} B, wrote {written} B of 4 MiB"
    );
    assert!(fs::read(upper.join("new")).unwrap() == new_data);
    m.unmount();
    stack.assert_layers_unchanged();
    // The stack over the kernel mount checks its layer again when dropped: before the mount goes.
    drop(stack);
    drop(k);
    inner.assert_layers_unchanged();
}

/// `--uring on` where the kernel offers no FUSE over io_uring (`fuse.enable_uring` off) is an
/// error that says what to turn on, and leaves nothing mounted. (Runs when the switch is off:
/// the suite's first pass; a test may not turn it off under other tests' live queues.)
#[test]
fn uring_on_without_kernel_support_fails_and_mounts_nothing() {
    require_root();
    if uring_param() != Some(false) {
        eprintln!("SKIP: fuse.enable_uring is not off here");
        return;
    }
    let env = TestEnv::new("uring-off");
    let base = env.layer("base");
    base.file("a", b"a");
    let stack = env.stack(&[&base]);
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let mnt = env.fresh_dir("mnt/u");
    let mut cmd = mount_command_with(
        &stack.lowers,
        Some(&UpperSpec::new(&upper, &work)),
        &mnt,
        false,
    );
    cmd.args(["--uring", "on"]);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "mounted anyway: {stderr}");
    assert!(
        stderr.contains("enable_uring"),
        "the error does not say what to turn on: {stderr}"
    );
    assert!(!is_mounted(&mnt), "a failed mount left {mnt:?} mounted");
    stack.assert_layers_unchanged();
}

/// A mount shows in /proc/mounts before its queues are registered; unmounting it in that window
/// ends the daemon as cleanly as any unmount (exit status 0), not as a failed mount. A race: 60
/// foreground mounts, each unmounted (umount2) the moment it appears. Against the daemon before
/// the fix every cycle failed ("registering the FUSE io_uring queues: ENOTCONN").
#[test]
fn unmounting_before_the_queues_are_up_ends_cleanly() {
    require_root();
    if !uring_on() {
        return;
    }
    let env = TestEnv::new("uring-early");
    let base = env.layer("base");
    base.file("a", b"a");
    let stack = env.stack(&[&base]);
    let mut failed = Vec::new();
    for i in 0..60 {
        let mnt = env.fresh_dir("mnt/e");
        let log = env.root.join(format!("e{i}.log"));
        let mut cmd = mount_command_with(&stack.lowers, None, &mnt, true);
        cmd.args(["--uring", "on"])
            .stdin(std::process::Stdio::null())
            .stdout(fs::File::create(&log).unwrap())
            .stderr(fs::File::create(&log).unwrap());
        let mut child = cmd.spawn().unwrap();
        // Polled without sleeping: the window is a few milliseconds.
        let start = std::time::Instant::now();
        let mut appeared = false;
        while start.elapsed() < Duration::from_secs(30) {
            if is_mounted(&mnt) {
                appeared = true;
                break;
            }
            std::thread::yield_now();
        }
        let path = std::ffi::CString::new(mnt.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path for the duration of the call.
        if unsafe { libc::umount2(path.as_ptr(), 0) } != 0 {
            // Busy (the daemon still setting up): detach, as any caller would.
            // SAFETY: as above.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
        let status = child.wait().unwrap();
        if !appeared || !status.success() {
            failed.push(format!(
                "cycle {i}: {status}: {}",
                fs::read_to_string(&log).unwrap_or_default()
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    stack.assert_layers_unchanged();
}
