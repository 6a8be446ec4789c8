//! File I/O served by the kernel (FUSE passthrough, as root) and what the daemon must still
//! do then: file data read and written through the mount without passing through the daemon
//! (its /proc/PID/io counters stay flat), a file copied up while open for reading from its
//! lower layer, and setuid/setgid cleared by unprivileged writes and truncations exactly as
//! kernel overlayfs clears them (the daemon asks the kernel to leave that to it).

mod common;

use common::*;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 12) as u8)
        .collect()
}

const MIB: usize = 1 << 20;

/// As root, the file data of a read-only mount's lower files and of the upper layer's files
/// moves through the mount (8 MiB each: a lower file read, a new file written in 4 KiB blocks
/// in scrambled order and fsynced, then read back after the caches are dropped) while the
/// daemon reads and writes almost nothing: the kernel does the I/O on the real files. Sizes
/// and contents are right through the mount and in the upper layer, and an append that
/// copies a lower file up keeps working.
#[test]
fn file_data_bypasses_the_daemon_as_root() {
    require_root();
    let env = TestEnv::new("pt-io");
    let base = env.layer("base");
    let lower_data = pattern(8 * MIB, 1);
    base.file("big", &lower_data);
    let stack = env.stack(&[&base]);
    let moved = |pids: &[i32], before: (u64, u64)| {
        let after = daemon_io(pids);
        (after.0 - before.0, after.1 - before.1)
    };

    let ro = stack.stratafs();
    let before = daemon_io(ro.daemon_pids());
    assert!(
        fs::read(ro.join("big")).unwrap() == lower_data,
        "lower file read wrong"
    );
    let (read, _) = moved(ro.daemon_pids(), before);
    assert!(
        read < MIB as u64,
        "the daemon read {read} B of an 8 MiB lower file itself"
    );
    ro.unmount();

    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    let pids = m.daemon_pids().to_vec();
    let before = daemon_io(&pids);
    let new_data = pattern(8 * MIB, 7);
    let f = fs::File::create(m.join("new")).unwrap();
    // Blocks in a scrambled order, so that nothing coalesces them into big writes.
    let blocks = new_data.len() / 4096;
    for k in 0..blocks {
        let b = (k * 769) % blocks;
        f.write_all_at(&new_data[b * 4096..(b + 1) * 4096], (b * 4096) as u64)
            .unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    drop_kernel_caches();
    assert!(fs::read(m.join("new")).unwrap() == new_data);
    let (read, written) = moved(&pids, before);
    assert!(
        read < MIB as u64 && written < MIB as u64,
        "the daemon moved the data itself: read {read} B, wrote {written} B for 8 MiB each way"
    );
    assert_eq!(
        fs::metadata(m.join("new")).unwrap().len(),
        new_data.len() as u64
    );
    assert!(
        fs::read(upper.join("new")).unwrap() == new_data,
        "upper copy differs"
    );

    // A copy-up by an append, then more writes through the kernel on the upper file.
    let mut a = fs::OpenOptions::new()
        .append(true)
        .open(m.join("big"))
        .unwrap();
    a.write_all(b"tail").unwrap();
    drop(a);
    let mut expect = lower_data.clone();
    expect.extend_from_slice(b"tail");
    assert_eq!(
        fs::metadata(m.join("big")).unwrap().len(),
        expect.len() as u64
    );
    assert!(fs::read(m.join("big")).unwrap() == expect);
    assert!(fs::read(upper.join("big")).unwrap() == expect);
    m.unmount();
    stack.assert_layers_unchanged();
}

/// A lower file held open for reading while another open copies it up and writes it: the
/// writer, every later open and the upper layer see the new data, and once every handle is
/// closed the file is served by the kernel from the upper copy. (Kernel overlayfs also
/// redirects the old reader to the copy; with passthrough the old reader may keep the lower
/// data until it reopens: not asserted either way.)
#[test]
fn copy_up_while_open_for_reading() {
    require_root();
    let env = TestEnv::new("pt-copyup");
    let base = env.layer("base");
    base.file("f", "lower data\n");
    let stack = env.stack(&[&base]);
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));

    let mut reader = fs::File::open(m.join("f")).unwrap();
    let mut s = String::new();
    reader.read_to_string(&mut s).unwrap();
    assert_eq!(s, "lower data\n");

    let mut writer = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.join("f"))
        .unwrap();
    writer.write_all(b"UPPER").unwrap();
    writer.seek(SeekFrom::Start(0)).unwrap();
    let mut w = String::new();
    writer.read_to_string(&mut w).unwrap();
    assert_eq!(w, "UPPER data\n");
    assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "UPPER data\n");
    let mut again = vec![0u8; 5];
    reader.read_exact_at(&mut again, 0).unwrap(); // the old handle still reads
    drop(reader);
    drop(writer);

    assert_eq!(fs::read_to_string(m.join("f")).unwrap(), "UPPER data\n");
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("f"))
        .unwrap()
        .write_all(b"more\n")
        .unwrap();
    assert_eq!(
        fs::read_to_string(m.join("f")).unwrap(),
        "UPPER data\nmore\n"
    );
    assert_eq!(
        fs::read_to_string(upper.join("f")).unwrap(),
        "UPPER data\nmore\n"
    );
    m.unmount();
    stack.assert_layers_unchanged();
}

/// A shell script run as uid/gid 1000 in `root`; panics if it fails.
fn run_as_user(root: &Path, script: &str) {
    let out = run_timeout(
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(root)
            .uid(1000)
            .gid(1000),
        Duration::from_secs(60),
    );
    assert!(
        out.success(),
        "as uid 1000 in {}: {}",
        root.display(),
        out.describe()
    );
}

/// Writes, truncations and O_TRUNC opens by an unprivileged caller clear setuid, and setgid
/// where group execute is set or the caller is not in the file's group; root's writes keep them — the modes afterwards are the
/// kernel overlay's, for lower files (copied up by the change) and for files already in the
/// upper layer.
#[test]
fn unprivileged_writes_clear_setuid_like_the_kernel() {
    require_root();
    let env = TestEnv::new("pt-setid");
    let base = env.layer("base");
    let files = [
        ("append-suid", 0o4777),
        ("append-sgid-x", 0o2777),
        ("append-sgid-nox", 0o2767),
        ("truncate-suid", 0o4777),
        ("otrunc-suid", 0o4777),
        ("root-append-suid", 0o4777),
        ("plain", 0o777),
        ("append-sgid-nox-mygroup", 0o2767),
    ];
    for (name, mode) in files {
        let gid = if name.ends_with("mygroup") { 1000 } else { 0 };
        base.file(name, "#!/bin/sh\n").owner(0, gid).mode(mode);
    }
    fs::set_permissions(&base.root, fs::Permissions::from_mode(0o777)).unwrap();
    let stack = env.stack(&[&base]);
    let script = "printf x >> append-suid && printf x >> append-sgid-x && \
                  printf x >> append-sgid-nox && truncate -s 3 truncate-suid && \
                  : > otrunc-suid && printf x >> plain && printf x >> append-sgid-nox-mygroup && \
                  cp plain up-suid && chmod 4777 up-suid && printf y >> up-suid";
    let modes = |root: &Path| -> Vec<(String, u32)> {
        let mut names: Vec<_> = files.iter().map(|f| f.0.to_string()).collect();
        names.push("up-suid".into());
        names
            .into_iter()
            .map(|n| {
                let mode = fs::metadata(root.join(&n)).unwrap().mode() & 0o7777;
                (n, mode)
            })
            .collect()
    };
    let act = |root: &Path| {
        run_as_user(root, script);
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(root.join("root-append-suid"))
            .unwrap();
        f.write_all(b"root\n").unwrap();
    };

    // The mount's root is the upper directory's: the user may create files in it.
    let (ku, kw) = upper_work(&env.fresh_dir("krw"));
    fs::set_permissions(&ku, fs::Permissions::from_mode(0o777)).unwrap();
    let kernel_modes = {
        let k = KernelOverlay::writable(&stack.kernel_lowers(), &ku, &kw, &env.fresh_dir("mnt/k"))
            .unwrap();
        act(k.path());
        modes(k.path())
    };
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    fs::set_permissions(&upper, fs::Permissions::from_mode(0o777)).unwrap();
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    act(m.path());
    let ours = modes(m.path());
    m.unmount();

    let fmt = |v: &[(String, u32)]| {
        v.iter()
            .map(|(n, m)| format!("{n} {m:o}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    assert_eq!(fmt(&ours), fmt(&kernel_modes), "stratafs vs kernel overlay");
    // What the kernel does, spelled out, so that the oracle itself is checked.
    assert_eq!(
        fmt(&ours),
        "append-suid 777, append-sgid-x 777, append-sgid-nox 767, truncate-suid 777, \
         otrunc-suid 777, root-append-suid 4777, plain 777, append-sgid-nox-mygroup 2767, \
         up-suid 777"
    );
    stack.assert_layers_unchanged();
}

/// The visible xattr names of those of `names` that exist under `root`, file by file.
fn xattr_lists(root: &Path, names: &[&str]) -> String {
    names
        .iter()
        .filter(|n| root.join(n).exists())
        .map(|n| visible_xattr_names(root, n))
        .collect::<Vec<_>>()
        .join("; ")
}

/// `security.capability` v2, `cap_net_bind_service=ep` (the kernel checks the format).
const FILE_CAP: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// A write drops a file's capability and nothing else, as through kernel overlayfs: lower
/// files with and without `security.capability` and `user.*` xattrs, some listed first (so
/// the daemon may cache what it read) and some not (so it may cache what it copied), are
/// appended to, which copies them up, and listed again; an upper file given a capability
/// is written too. Each step's lists match the kernel's.
#[test]
fn writes_drop_file_capabilities_like_the_kernel() {
    require_root();
    let env = TestEnv::new("pt-cap");
    let base = env.layer("base");
    base.file("cap", "#!/bin/sh\n")
        .xattr("security.capability", &FILE_CAP)
        .xattr("user.keep", b"1");
    base.file("user-only", "x").xattr("user.keep", b"2");
    base.file("bare", "x");
    base.file("cap-unread", "x")
        .xattr("security.capability", &FILE_CAP);
    base.file("user-unread", "x").xattr("user.keep", b"3");
    let stack = env.stack(&[&base]);
    let listed_first = ["cap", "user-only", "bare"];
    let all = [
        "cap",
        "user-only",
        "bare",
        "cap-unread",
        "user-unread",
        "new",
    ];
    let lists = xattr_lists;
    let act = |root: &Path| -> Vec<String> {
        let mut seen = vec![lists(root, &listed_first)];
        for n in ["cap", "user-only", "bare", "cap-unread", "user-unread"] {
            let mut f = fs::OpenOptions::new()
                .append(true)
                .open(root.join(n))
                .unwrap();
            f.write_all(b"y").unwrap();
        }
        seen.push(lists(root, &all));
        fs::write(root.join("new"), "z").unwrap();
        lsetxattr(&root.join("new"), b"security.capability", &FILE_CAP).unwrap();
        seen.push(lists(root, &all));
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(root.join("new"))
            .unwrap();
        f.write_all(b"y").unwrap();
        drop(f);
        seen.push(lists(root, &all));
        seen
    };
    let (kernel, ours) = stack.on_kernel_then_stratafs(act);
    assert_eq!(ours, kernel, "stratafs vs kernel overlay");
    // The oracle itself: capabilities are there until the write, then gone.
    assert_eq!(
        kernel[0],
        "cap: security.capability user.keep; user-only: user.keep; bare: "
    );
    assert!(
        kernel[1].starts_with(
            "cap: user.keep; user-only: user.keep; bare: ; cap-unread: ; user-unread: user.keep"
        ),
        "{kernel:?}"
    );
    assert!(
        kernel[2].ends_with("new: security.capability"),
        "{kernel:?}"
    );
    assert!(kernel[3].ends_with("new: "), "{kernel:?}");
    stack.assert_layers_unchanged();
}

/// Attribute changes drop a capability only where the kernel does (chown and truncate,
/// not chmod or times), and the names the daemon keeps across them follow: each file's
/// names are listed before every step (so the daemon has them cached), then chmod, utimes,
/// chown and truncate; lower files with and without a capability, an upper one given
/// one. Each step's lists match the kernel's. (The kernel removes the capability of a
/// file it chowns with a removexattr of its own, which must not be answered from, or
/// leave behind, a stale list.)
#[test]
fn attribute_changes_drop_capabilities_like_the_kernel() {
    require_root();
    let env = TestEnv::new("pt-setattr-cap");
    let base = env.layer("base");
    base.file("cap-chown", "x")
        .xattr("security.capability", &FILE_CAP)
        .xattr("user.keep", b"1");
    base.file("cap-trunc", "xx")
        .xattr("security.capability", &FILE_CAP);
    base.file("bare", "x");
    let stack = env.stack(&[&base]);
    let names = ["cap-chown", "cap-trunc", "bare", "new"];
    let lists = |root: &Path| xattr_lists(root, &names);
    let act = |root: &Path| -> Vec<String> {
        fs::write(root.join("new"), "z").unwrap();
        lsetxattr(&root.join("new"), b"security.capability", &FILE_CAP).unwrap();
        let mut seen = vec![lists(root)];
        for n in names {
            fs::set_permissions(root.join(n), fs::Permissions::from_mode(0o750)).unwrap();
        }
        seen.push(lists(root));
        for n in names {
            let f = fs::File::open(root.join(n)).unwrap();
            f.set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_000_000))
                .unwrap();
        }
        seen.push(lists(root));
        for n in ["cap-chown", "bare", "new"] {
            std::os::unix::fs::lchown(root.join(n), Some(1000), Some(1000)).unwrap();
        }
        seen.push(lists(root));
        fs::OpenOptions::new()
            .write(true)
            .open(root.join("cap-trunc"))
            .unwrap()
            .set_len(1)
            .unwrap();
        seen.push(lists(root));
        seen
    };
    let (kernel, ours) = stack.on_kernel_then_stratafs(act);
    assert_eq!(ours, kernel, "stratafs vs kernel overlay");
    // The oracle itself: chmod and times keep the capabilities, chown and truncate drop them.
    let all = "cap-chown: security.capability user.keep; cap-trunc: security.capability; \
               bare: ; new: security.capability";
    assert_eq!(kernel[0], all);
    assert_eq!(kernel[1], all);
    assert_eq!(kernel[2], all);
    assert_eq!(
        kernel[3],
        "cap-chown: user.keep; cap-trunc: security.capability; bare: ; new: "
    );
    assert_eq!(
        kernel[4],
        "cap-chown: user.keep; cap-trunc: ; bare: ; new: "
    );
    stack.assert_layers_unchanged();
}
