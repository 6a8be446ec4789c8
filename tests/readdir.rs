//! Merged readdir: de-duplication, whiteouts, d_type, 100k entries over three layers, and
//! telldir/seekdir stability.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Reads a directory with telldir before each readdir: (position, entry) pairs.
fn read_with_positions(dir: &Path) -> Vec<(i64, RawDirent)> {
    let mut d = Dir::open(dir).unwrap_or_else(|e| panic!("opendir {}: {e}", dir.display()));
    let mut out = Vec::new();
    loop {
        let pos = d.tell();
        match d
            .read()
            .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        {
            Some(e) => out.push((pos, e)),
            None => break,
        }
    }
    out
}

/// Checks seekdir to every sampled telldir position returns the same entry, that reading from
/// a seek point yields the same suffix, rewinddir, and two interleaved handles.
fn check_seekdir(dir: &Path, sample_every: usize) {
    let all = read_with_positions(dir);
    assert!(
        all.len() >= 2,
        "{} listed only {} entries",
        dir.display(),
        all.len()
    );
    let names: Vec<&[u8]> = all.iter().map(|(_, e)| e.name.as_slice()).collect();
    let uniq: BTreeSet<&[u8]> = names.iter().copied().collect();
    assert_eq!(
        uniq.len(),
        names.len(),
        "duplicate names in a single listing of {}",
        dir.display()
    );

    let mut d = Dir::open(dir).unwrap();
    let mut idx: Vec<usize> = (0..all.len()).step_by(sample_every.max(1)).collect();
    idx.push(all.len() - 1);
    idx.push(all.len() / 2);
    // Out of order on purpose: backwards, then forwards.
    idx.sort_unstable_by(|a, b| b.cmp(a));
    let mut forward = idx.clone();
    forward.reverse();
    for i in idx.iter().chain(forward.iter()) {
        let (pos, e) = &all[*i];
        d.seek(*pos);
        let got = d.read().unwrap().unwrap_or_else(|| {
            panic!("seekdir({pos}) then readdir gave end of dir, expected entry #{i}")
        });
        assert_eq!(
            got.name,
            e.name,
            "seekdir({pos}) to entry #{i}: got {:?}",
            got.name.escape_ascii().to_string()
        );
        assert_eq!(got.ino, e.ino, "d_ino after seekdir to entry #{i}");
        assert_eq!(got.dtype, e.dtype, "d_type after seekdir to entry #{i}");
    }
    // A suffix read after seeking to the middle equals the original suffix.
    let mid = all.len() / 2;
    d.seek(all[mid].0);
    let rest: Vec<Vec<u8>> = d.read_all().unwrap().into_iter().map(|e| e.name).collect();
    let expect: Vec<Vec<u8>> = all[mid..].iter().map(|(_, e)| e.name.clone()).collect();
    assert_eq!(
        rest.len(),
        expect.len(),
        "entries after seekdir to the middle"
    );
    assert!(rest == expect, "suffix after seekdir to the middle differs");
    // Seeking to the position after the last entry gives end of directory.
    let last_pos = {
        let mut d2 = Dir::open(dir).unwrap();
        while d2.read().unwrap().is_some() {}
        d2.tell()
    };
    d.seek(last_pos);
    assert!(
        d.read().unwrap().is_none(),
        "seekdir to the end position should give end of dir"
    );
    // rewinddir restarts.
    d.rewind();
    let again: Vec<Vec<u8>> = d.read_all().unwrap().into_iter().map(|e| e.name).collect();
    let first: Vec<Vec<u8>> = all.iter().map(|(_, e)| e.name.clone()).collect();
    assert!(
        again == first,
        "rewinddir listing differs from the first listing"
    );
    // Two handles read interleaved do not disturb each other.
    let mut a = Dir::open(dir).unwrap();
    let mut b = Dir::open(dir).unwrap();
    let (mut la, mut lb) = (Vec::new(), Vec::new());
    loop {
        let x = a.read().unwrap();
        let y = b.read().unwrap();
        let y2 = if y.is_some() { b.read().unwrap() } else { None };
        let done = x.is_none() && y.is_none();
        la.extend(x.map(|e| e.name));
        lb.extend(y.map(|e| e.name));
        lb.extend(y2.map(|e| e.name));
        if done {
            break;
        }
    }
    assert!(
        la == first && lb == first,
        "interleaved handles gave different listings"
    );
}

/// Merged listing as name → d_type, asserting no duplicates and "." ".." once.
fn listing(dir: &Path) -> BTreeMap<Vec<u8>, u8> {
    let list = read_dir_raw(dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
    let mut out = BTreeMap::new();
    let mut dups = Vec::new();
    for e in list {
        if out.insert(e.name.clone(), e.dtype).is_some() {
            dups.push(e.name.escape_ascii().to_string());
        }
    }
    assert!(
        dups.is_empty(),
        "{}: names listed twice: {:?}",
        dir.display(),
        &dups[..dups.len().min(20)]
    );
    assert!(
        out.remove(&b"."[..]).is_some() && out.remove(&b".."[..]).is_some(),
        "missing . or .."
    );
    out
}

fn compare_listing(expected: &BTreeMap<Vec<u8>, u8>, got: &BTreeMap<Vec<u8>, u8>, what: &str) {
    let mut problems = Vec::new();
    for (n, t) in expected {
        match got.get(n) {
            None => problems.push(format!("missing {}", n.escape_ascii())),
            Some(g) if g != t => {
                problems.push(format!("{}: d_type {g} expected {t}", n.escape_ascii()))
            }
            _ => {}
        }
    }
    for n in got.keys() {
        if !expected.contains_key(n) {
            problems.push(format!("unexpected {}", n.escape_ascii()));
        }
    }
    assert!(problems.is_empty(), "{}", format_problems(what, &problems));
}

/// 100k names spread over three layers, with duplicates across layers, whiteouts in two
/// dialects (OCI, char 0/0) hiding ranges, and a few non-regular types: compared with an independent model and
/// with the kernel, then telldir/seekdir over it.
#[test]
fn readdir_100k_entries_three_layers() {
    require_root();
    let env = TestEnv::new("readdir-100k");
    let t0 = std::time::Instant::now();
    let base = env.layer("base");
    let mid = env.layer("mid");
    let top = env.layer("top");
    let name = |i: u32| format!("big/f{i:06}");
    let mut model: BTreeMap<Vec<u8>, u8> = BTreeMap::new();
    // base: 0..60000 regular files
    // Plain files are written directly (the builder's per-file mkdir -p/chmod is slow at this
    // scale); umask 022 gives them mode 0644 like the builder.
    for l in [&base, &mid, &top] {
        l.dir("big");
    }
    let quick = |l: &Layer, i: u32, content: &str| fs::write(l.path(name(i)), content).unwrap();
    for i in 0..60_000 {
        quick(&base, i, "");
        model.insert(format!("f{i:06}").into_bytes(), libc::DT_REG);
    }
    // mid: 40000..80000 (20000 duplicates); every 1000th a dir, every 1000th+1 a symlink;
    // whiteouts for 0..5000.
    for i in 40_000..80_000 {
        let t = match i % 1000 {
            0 => {
                mid.dir(name(i));
                libc::DT_DIR
            }
            1 => {
                mid.symlink(name(i), "target");
                libc::DT_LNK
            }
            _ => {
                quick(&mid, i, "m");
                libc::DT_REG
            }
        };
        model.insert(format!("f{i:06}").into_bytes(), t);
    }
    // OCI whiteouts at scale (the kernel oracle mounts a converted copy of this layer; its
    // directory sizes are not visible since "big" in top is the top-most instance).
    for i in 0..5_000 {
        mid.whiteout(name(i), Whiteout::Oci);
        model.remove(format!("f{i:06}").as_bytes());
    }
    // top: 70000..100000 (10000 duplicates with mid), whiteouts for 45000..50000 (mid and base),
    // a fifo replacing one name.
    for i in 70_000..100_000 {
        quick(&top, i, "t");
        model.insert(format!("f{i:06}").into_bytes(), libc::DT_REG);
    }
    for i in 45_000..50_000 {
        top.whiteout(name(i), Whiteout::CharDev);
        model.remove(format!("f{i:06}").as_bytes());
    }
    top.fifo("big/f050000");
    model.insert(b"f050000".to_vec(), libc::DT_FIFO);
    assert_eq!(model.len(), 90_000);

    eprintln!("layers built: {:?}", t0.elapsed());
    let stack = env.stack(&[&top, &mid, &base]);
    eprintln!("integrity snapshots: {:?}", t0.elapsed());
    let k = stack.kernel();
    eprintln!("kernel mounted: {:?}", t0.elapsed());
    let m = stack.stratafs();
    let got = listing(&m.join("big"));
    eprintln!("stratafs listing: {:?}", t0.elapsed());
    compare_listing(&model, &got, "stratafs listing vs model");
    let kern = listing(&k.join("big"));
    compare_listing(&kern, &got, "stratafs listing vs kernel");
    // d_ino == st_ino on a sample.
    for (i, e) in read_dir_raw(&m.join("big")).unwrap().iter().enumerate() {
        if i % 997 == 0 && e.name != b"." && e.name != b".." {
            let md = std::fs::symlink_metadata(
                m.join("big")
                    .join(std::ffi::OsStr::new(std::str::from_utf8(&e.name).unwrap())),
            )
            .unwrap();
            assert_eq!(
                std::os::unix::fs::MetadataExt::ino(&md),
                e.ino,
                "d_ino vs st_ino of {}",
                e.name.escape_ascii()
            );
        }
    }
    check_seekdir(&m.join("big"), 1000);
    eprintln!("seekdir checks: {:?}", t0.elapsed());
    drop(m);
    drop(k);
    // Full tree comparison (lstat of every entry, probes of every layer name).
    stack.assert_matches_kernel();
    eprintln!("full comparison: {:?}", t0.elapsed());
}

/// telldir/seekdir on a merged directory of a few thousand entries (several getdents calls),
/// and on small and empty merged directories.
#[test]
fn telldir_seekdir_merged() {
    require_root();
    let env = TestEnv::new("seekdir");
    let base = env.layer("base");
    let mid = env.layer("mid");
    let top = env.layer("top");
    for i in 0..3000 {
        let long = format!("d/{}{i:05}", "n".repeat(i % 200));
        match i % 3 {
            0 => base.file(&long, ""),
            1 => mid.file(&long, ""),
            _ => top.file(&long, ""),
        };
        if i % 7 == 0 {
            base.file(&long, "dup").mode(0o600);
        }
        if i % 11 == 0 && i % 3 != 2 {
            top.whiteout(&long, Whiteout::CharDev);
        }
    }
    base.dir("small");
    base.file("small/a", "");
    top.file("small/b", "");
    base.dir("empty");
    top.dir("empty");
    let stack = env.stack(&[&top, &mid, &base]);
    let m = stack.stratafs();
    check_seekdir(&m.join("d"), 37);
    check_seekdir(&m.join("small"), 1);
    check_seekdir(&m.join("empty"), 1);
    check_seekdir(m.path(), 1);
    let k = stack.kernel();
    compare_listing(
        &listing(&k.join("d")),
        &listing(&m.join("d")),
        "stratafs vs kernel",
    );
}

/// d_type of every kind of entry matches lstat and the kernel (whole-tree comparison checks
/// d_type too; this makes the kinds explicit).
#[test]
fn readdir_dtype_every_kind() {
    require_root();
    let env = TestEnv::new("dtype");
    let base = env.layer("base");
    let top = env.layer("top");
    base.file("t/file", "");
    base.dir("t/dir");
    base.symlink("t/link", "file");
    base.fifo("t/fifo");
    base.socket("t/sock");
    base.chardev("t/chr", 1, 3);
    base.blockdev("t/blk", 7, 0);
    base.file("t/replaced_by_dir", "");
    base.dir("t/replaced_by_file");
    top.dir("t/replaced_by_dir");
    top.file("t/replaced_by_file", "");
    top.symlink("t/replaced_link", "x");
    let stack = env.stack(&[&top, &base]);
    let (_k, s) = stack.assert_matches_kernel();
    let expect = [
        ("t/file", libc::DT_REG),
        ("t/dir", libc::DT_DIR),
        ("t/link", libc::DT_LNK),
        ("t/fifo", libc::DT_FIFO),
        ("t/sock", libc::DT_SOCK),
        ("t/chr", libc::DT_CHR),
        ("t/blk", libc::DT_BLK),
        ("t/replaced_by_dir", libc::DT_DIR),
        ("t/replaced_by_file", libc::DT_REG),
    ];
    for (p, t) in expect {
        assert_eq!(s.entry(p).d_type, Some(t), "d_type of {p}");
    }
}

/// A stack of two layers whose directory `d` holds `n` empty files `fNNNNN`, every other one
/// in each layer.
fn files_in_two_layers(env: &TestEnv, n: usize) -> Stack<'_> {
    let base = env.layer("base");
    let top = env.layer("top");
    for l in [&base, &top] {
        l.dir("d");
    }
    for i in 0..n {
        let l = if i % 2 == 0 { &base } else { &top };
        fs::write(l.path(format!("d/f{i:05}")), "").unwrap();
    }
    env.stack(&[&top, &base])
}

/// A reader that goes on after names were removed and created — and after another reader
/// listed the directory afresh, to its end, in between — sees every name that was there
/// throughout exactly once, and no name twice: positions are name cookies that mean the same
/// in any listing of the directory (there are no directory handles to hold a snapshot).
#[test]
fn reading_on_after_changes_skips_and_repeats_nothing() {
    require_root();
    let env = TestEnv::new("readdir-changes");
    let stack = files_in_two_layers(&env, 3000);
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    let dir = m.join("d");

    let mut reader = Dir::open(&dir).unwrap();
    let mut seen: Vec<Vec<u8>> = Vec::new();
    while seen.len() < 1000 {
        let e = reader.read().unwrap().expect("directory ended early");
        seen.push(e.name);
    }
    let removed: BTreeSet<String> = (0..3000).step_by(6).map(|i| format!("f{i:05}")).collect();
    for n in &removed {
        fs::remove_file(dir.join(n)).unwrap();
    }
    for i in 0..1000 {
        fs::write(dir.join(format!("new{i:04}")), "").unwrap();
    }
    let fresh = read_dir_raw(&dir).unwrap();
    assert_eq!(
        fresh.len(),
        2 + 3000 - removed.len() + 1000,
        "a fresh listing"
    );
    while let Some(e) = reader.read().unwrap() {
        seen.push(e.name);
    }
    drop(reader);

    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for n in &seen {
        *counts
            .entry(String::from_utf8_lossy(n).into_owned())
            .or_default() += 1;
    }
    let twice: Vec<&String> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, _)| n)
        .collect();
    assert!(twice.is_empty(), "listed twice: {twice:?}");
    let kept = (0..3000)
        .map(|i| format!("f{i:05}"))
        .filter(|n| !removed.contains(n));
    let skipped: Vec<String> = kept.filter(|n| !counts.contains_key(n)).collect();
    assert!(skipped.is_empty(), "skipped: {skipped:?}");
    assert!(counts.contains_key(".") && counts.contains_key(".."));
}

fn walk(dir: &Path) -> usize {
    let mut n = 0;
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        n += 1;
        if fs::symlink_metadata(e.path()).unwrap().is_dir() {
            n += walk(&e.path());
        }
    }
    n
}

/// Directories are opened without a request to the daemon: walking 60 directories again,
/// once the kernel holds their entries and listings, makes the daemon take almost no
/// request (opening and releasing each directory would be two per directory).
#[test]
fn a_warm_walk_costs_no_request_per_directory() {
    require_root();
    let env = TestEnv::new("readdir-warm-walk");
    let base = env.layer("base");
    let top = env.layer("top");
    for d in 0..60 {
        for f in 0..5 {
            let l = if f % 2 == 0 { &base } else { &top };
            l.file(format!("t/d{d:02}/f{f}"), "x");
        }
    }
    let stack = env.stack(&[&top, &base]);
    let m = stack.stratafs();
    let pids = m.daemon_pids().to_vec();
    assert_eq!(walk(m.path()), 1 + 60 * 6);
    let before = daemon_counter(&pids, "io", "syscr:");
    assert_eq!(walk(m.path()), 1 + 60 * 6);
    let reads = daemon_counter(&pids, "io", "syscr:") - before;
    assert!(
        reads < 30,
        "the daemon made {reads} reads during a warm walk of 60 directories"
    );
}

/// A reader that goes on listing (and stat'ing, like `ls -l`) a lower directory after every file
/// in it was copied up and the kernel forgot them sees the copies: the listing the daemon keeps
/// between a reader's requests still holds the lower files' attributes, which readdirplus may
/// use only while nothing under the directory has changed.
#[test]
fn readdirplus_after_copy_ups_in_a_listed_directory_shows_the_copies() {
    require_root();
    let env = TestEnv::new("readdir-plus-copied");
    let base = env.layer("base");
    base.dir("d");
    let files = 3000;
    for i in 0..files {
        fs::write(base.path(format!("d/f{i:05}")), "lower").unwrap();
    }
    let stack = env.stack(&[&base]);
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    let dir = m.join("d");

    // stat as it reads, so that the kernel goes on asking for entries with attributes.
    let mut reader = Dir::open(&dir).unwrap();
    let mut seen = 0;
    while seen < 500 {
        let e = reader.read().unwrap().expect("directory ended early");
        fs::symlink_metadata(dir.join(OsStr::from_bytes(&e.name))).unwrap();
        seen += 1;
    }
    for i in 0..files {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(dir.join(format!("f{i:05}")))
            .unwrap();
        f.write_all(b"+").unwrap();
    }
    forget_kernel_inodes();
    let mut stale = Vec::new();
    while let Some(e) = reader.read().unwrap() {
        let name = OsStr::from_bytes(&e.name);
        let st = fs::symlink_metadata(dir.join(name)).unwrap();
        if st.is_file() && st.len() != 6 {
            stale.push(format!("{}: {} bytes", name.to_string_lossy(), st.len()));
        }
    }
    drop(reader);
    assert!(
        stale.is_empty(),
        "{} files listed with the lower file's attributes, e.g. {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
    assert_eq!(fs::read(dir.join("f01234")).unwrap(), b"lower+");
}

/// A hard link in a directory nothing has changed shows the copy-up of its other name made
/// elsewhere, also when it is first seen through readdirplus after the kernel forgot both (the
/// listing's attributes of a file with other names are not used).
#[test]
fn readdirplus_shows_a_hard_link_copied_up_under_another_name() {
    require_root();
    let env = TestEnv::new("readdir-plus-link");
    let base = env.layer("base");
    base.dir("a");
    base.dir("b");
    fs::write(base.path("a/f"), "lower").unwrap();
    fs::hard_link(base.path("a/f"), base.path("b/g")).unwrap();
    let stack = env.stack(&[&base]);
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    fs::OpenOptions::new()
        .append(true)
        .open(m.join("a/f"))
        .unwrap()
        .write_all(b"+")
        .unwrap();
    forget_kernel_inodes();
    let listed: Vec<(Vec<u8>, u64)> = fs::read_dir(m.join("b"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().as_bytes().to_vec(),
                e.metadata().unwrap().len(),
            )
        })
        .collect();
    assert_eq!(listed, vec![(b"g".to_vec(), 6)], "b/ as listed");
    assert_eq!(fs::read(m.join("b/g")).unwrap(), b"lower+");
}

/// A directory whose listing the daemon kept after a reader went through it, changed through
/// the mount and then read on from the middle once the kernel lost its own copy of the listing
/// (as memory reclaim makes it read on from the first page it lost): the entries after that
/// position are the directory's as it is now, not as it was listed.
#[test]
fn reading_on_from_the_middle_after_changes_shows_them() {
    require_root();
    let env = TestEnv::new("readdir-kept-changed");
    let stack = files_in_two_layers(&env, 3000);
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    let dir = m.join("d");

    let first = read_dir_raw(&dir).unwrap();
    assert_eq!(first.len(), 3002);
    let mid = first[1500].off;
    let removed: BTreeSet<Vec<u8>> = (0..3000)
        .step_by(5)
        .map(|i| format!("f{i:05}").into_bytes())
        .collect();
    for n in &removed {
        fs::remove_file(dir.join(OsStr::from_bytes(n))).unwrap();
    }
    for i in 0..500 {
        fs::write(dir.join(format!("new{i:04}")), "").unwrap();
    }
    // The kernel's copy of the listing goes with the page cache; it keeps the directory.
    fs::write("/proc/sys/vm/drop_caches", "1").unwrap();

    let mut reader = Dir::open(&dir).unwrap();
    reader.seek(mid);
    let suffix: BTreeSet<Vec<u8>> = reader
        .read_all()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    drop(reader);

    let now = read_dir_raw(&dir).unwrap();
    assert_eq!(now.len(), 3002 - removed.len() + 500, "a fresh listing");
    let expected: BTreeSet<Vec<u8>> = now
        .into_iter()
        .filter(|e| e.off > mid)
        .map(|e| e.name)
        .collect();
    let stale: Vec<String> = suffix
        .intersection(&removed)
        .map(|n| n.escape_ascii().to_string())
        .collect();
    assert!(stale.is_empty(), "removed names listed: {stale:?}");
    let missing: Vec<String> = expected
        .difference(&suffix)
        .map(|n| n.escape_ascii().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "names not listed after the position: {missing:?}"
    );
    assert_eq!(suffix, expected);
    drop(m);
    stack.assert_layers_unchanged();
}

/// `ls -l` of a big directory over three layers, twice, the second time after the kernel lost
/// its copy of the listing but still holds every file: names, d_ino, d_type and attributes
/// as the kernel's overlayfs shows them both times (the daemon then answers readdirplus with
/// names alone for the files the kernel holds, and the first time stats each file only in the
/// layer the listing found it in).
#[test]
fn ls_l_again_after_the_kernel_lost_the_listing_matches_the_kernel() {
    require_root();
    let env = TestEnv::new("readdir-ls-l-again");
    let layers = [env.layer("base"), env.layer("mid"), env.layer("top")];
    for l in &layers {
        l.dir("d");
    }
    for i in 0..4000 {
        let l = &layers[i % 3];
        fs::write(l.path(format!("d/f{i:05}")), "x".repeat(i % 7)).unwrap();
        if i % 10 == 0 {
            // The same name higher up: the higher one shows.
            fs::write(layers[2].path(format!("d/f{i:05}")), "top").unwrap();
        }
    }
    // Whiteouts in the middle layer of names only the bottom one has.
    let hidden: Vec<usize> = (0..4000)
        .filter(|i| i % 3 == 0 && i % 10 != 0 && i % 31 == 0)
        .collect();
    for i in &hidden {
        layers[1].whiteout(format!("d/f{i:05}"), Whiteout::CharDev);
    }
    let stack = env.stack(&[&layers[2], &layers[1], &layers[0]]);
    let kernel = stack.kernel();
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));

    type Row = (u8, u32, u64, u64, i64);
    // Reads the directory and stats each entry as it goes (so that the kernel keeps asking
    // for entries with attributes): name -> (d_type, mode, nlink, size, mtime), and whether
    // every d_ino is its file's st_ino.
    let ls_l = |dir: &Path| -> (BTreeMap<Vec<u8>, Row>, Vec<String>) {
        let mut rows = BTreeMap::new();
        let mut bad_ino = Vec::new();
        let mut d = Dir::open(dir).unwrap();
        while let Some(e) = d.read().unwrap() {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let st = fs::symlink_metadata(dir.join(OsStr::from_bytes(&e.name))).unwrap();
            if st.ino() != e.ino {
                bad_ino.push(format!(
                    "{}: d_ino {} st_ino {}",
                    e.name.escape_ascii(),
                    e.ino,
                    st.ino()
                ));
            }
            rows.insert(
                e.name,
                (e.dtype, st.mode(), st.nlink(), st.size(), st.mtime()),
            );
        }
        (rows, bad_ino)
    };
    let (want, _) = ls_l(&kernel.path().join("d"));
    assert_eq!(want.len(), 4000 - hidden.len());
    let dir = m.join("d");
    for pass in ["cold", "after the kernel lost the listing"] {
        let (got, bad_ino) = ls_l(&dir);
        assert!(bad_ino.is_empty(), "{pass}: {bad_ino:?}");
        let differ: Vec<String> = want
            .iter()
            .filter(|(n, row)| got.get(*n) != Some(row))
            .map(|(n, row)| format!("{}: {:?}, kernel {row:?}", n.escape_ascii(), got.get(n)))
            .collect();
        assert!(
            differ.is_empty(),
            "{pass}: {} differ: {:?}",
            differ.len(),
            &differ[..differ.len().min(5)]
        );
        assert_eq!(got.len(), want.len(), "{pass}: entries");
        fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
    }
    drop(m);
    drop(kernel);
    stack.assert_layers_unchanged();
}

/// Three layers under `a/` (top first): merged directories two levels down with shadowed
/// names, whiteouts of files and of a directory in two dialects, an opaque directory, xattr
/// whiteouts.
fn nested_layers(env: &TestEnv) -> [Layer; 3] {
    let base = env.layer("base");
    let mid = env.layer("mid");
    let top = env.layer("top");
    for (l, files) in [
        (&base, &["f1", "f2", "f3", "sub/g1", "sub/deep/h1"][..]),
        (&mid, &["f2", "f4", "sub/g2", "sub/deep/h2"][..]),
        (&top, &["f5", "sub/g3"][..]),
    ] {
        for f in files {
            l.file(
                format!("a/m/{f}"),
                format!("{f} of {}", l.path("").display()),
            );
        }
    }
    mid.whiteout("a/m/f3", Whiteout::CharDev);
    top.whiteout("a/m/f1", Whiteout::Oci);
    top.whiteout("a/m/sub/g2", Whiteout::XattrTrusted);
    base.file("a/o/x", "x");
    base.file("a/o/y", "y");
    top.file("a/o/new", "new");
    top.file("a/o/kept", "kept");
    top.opaque("a/o", Opaque::Trusted);
    base.file("a/w/z", "z");
    mid.whiteout("a/w", Whiteout::CharDev);
    top.file("a/w2/only", "top");
    [top, mid, base]
}

/// [`nested_layers`] stacked.
fn nested_merged_tree(env: &TestEnv) -> Stack<'_> {
    let [top, mid, base] = nested_layers(env);
    env.stack(&[&top, &mid, &base])
}

/// Directories are listed ahead of their readers (the subdirectories of a directory read
/// with readdirplus, theirs looked up): a tree read after they were matches the kernel's, and
/// a directory changed after it was listed ahead shows the change.
#[test]
fn directories_listed_ahead_match_the_kernel_and_show_later_changes() {
    require_root();
    let env = TestEnv::new("readdir-ahead");
    let stack = nested_merged_tree(&env);
    let kernel = stack.kernel();
    // (Below the root, whose times are the upper layer's in a writable mount.)
    let want = Snapshot::take(&kernel.path().join("a"));
    drop(kernel);
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    // Only the root is read: `a` is handed to the kernel, and listed ahead in the background,
    // its subdirectories looked up (given time: nothing here waits on a result).
    assert_eq!(listing(m.path()).len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let got = Snapshot::take(&m.join("a"));
    assert_snapshots_eq(&want, &got, Mode::Merged, "kernel", "stratafs");

    // A fresh mount, listed ahead again; then changes below, through the mount.
    drop(m);
    let (upper, work) = upper_work(&env.fresh_dir("rw2"));
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    assert_eq!(listing(m.path()).len(), 1);
    std::thread::sleep(std::time::Duration::from_millis(300));
    fs::write(m.join("a/m/new"), "n").unwrap();
    fs::remove_file(m.join("a/m/f2")).unwrap();
    fs::create_dir(m.join("a/m/sub/nd")).unwrap();
    fs::rename(m.join("a/o/kept"), m.join("a/m/x")).unwrap();
    fs::remove_dir_all(m.join("a/w2")).unwrap();
    let got = Snapshot::take(m.path());
    got.assert_children("a", &["m", "o"]);
    got.assert_children("a/m", &["f4", "f5", "new", "sub", "x"]);
    got.assert_children("a/m/sub", &["deep", "g1", "g3", "nd"]);
    got.assert_children("a/o", &["new"]);
    drop(m);
    stack.assert_layers_unchanged();
}

/// `dir` and everything below it as `find` reads them: names, types and inode numbers
/// from the listings alone (no stat), depth first, from this one thread.
fn walk_listings(dir: &Path, rel: &str, out: &mut BTreeMap<String, (u8, u64)>) {
    let mut entries =
        read_dir_raw(dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    for e in entries {
        if e.name == b"." || e.name == b".." {
            continue;
        }
        let name = String::from_utf8_lossy(&e.name).into_owned();
        let path = format!("{rel}/{name}");
        if e.dtype == libc::DT_DIR {
            walk_listings(&dir.join(OsStr::from_bytes(&e.name)), &path, out);
        }
        out.insert(path, (e.dtype, e.ino));
    }
}

/// The nested tree, three levels deeper, with symlinks, a name a lower layer has as a file
/// and an upper one as a symlink, and whiteouts of every dialect down there.
fn deep_merged_tree(env: &TestEnv) -> Stack<'_> {
    let [top, mid, base] = nested_layers(env);
    for (l, files) in [
        (&base, &["p1", "p4", "p5", "p6"][..]),
        (&mid, &["p2"][..]),
        (&top, &["p3", "d5/q"][..]),
    ] {
        for f in files {
            l.file(
                format!("a/m/sub/deep/d4/{f}"),
                format!("{f} of {}", l.path("").display()),
            );
        }
    }
    base.symlink("a/m/sub/deep/d4/ln", "p1");
    base.file("a/m/sub/deep/d4/was-file", "file");
    mid.symlink("a/m/sub/deep/d4/was-file", "p2");
    mid.symlink("a/m/sub/deep/d4/d5/up", "../p2");
    mid.whiteout("a/m/sub/deep/d4/p4", Whiteout::CharDev);
    top.whiteout("a/m/sub/deep/d4/p5", Whiteout::Oci);
    top.whiteout("a/m/sub/deep/d4/p6", Whiteout::XattrTrusted);
    env.stack(&[&top, &mid, &base])
}

/// A reader that asks about none of the files of the directories it reads (a `find`) is
/// handed their names alone, from listings that stat no file that cannot be a whiteout:
/// what it reads matches the kernel's listings, each name's inode number is the one a stat
/// gives, and stat'ing the files afterwards (a lookup each) matches the kernel.
#[test]
fn a_walk_that_stats_no_file_matches_the_kernel() {
    require_root();
    let env = TestEnv::new("readdir-names");
    let stack = deep_merged_tree(&env);
    let kernel = stack.kernel();
    let mut want = BTreeMap::new();
    walk_listings(&kernel.path().join("a"), "a", &mut want);
    let want_snap = Snapshot::take(&kernel.path().join("a"));
    drop(kernel);
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    let mut got = BTreeMap::new();
    walk_listings(&m.join("a"), "a", &mut got);
    let types = |w: &BTreeMap<String, (u8, u64)>| {
        w.iter()
            .map(|(p, (t, _))| (p.as_bytes().to_vec(), *t))
            .collect::<BTreeMap<_, _>>()
    };
    compare_listing(
        &types(&want),
        &types(&got),
        "walk without stats, kernel vs stratafs",
    );
    let mut problems = Vec::new();
    for (path, (_, ino)) in &got {
        let st = fs::symlink_metadata(m.join(path)).unwrap_or_else(|e| panic!("lstat {path}: {e}"));
        if st.ino() != *ino {
            problems.push(format!(
                "{path}: listed as inode {ino}, stat says {}",
                st.ino()
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("inode numbers", &problems)
    );
    let got_snap = Snapshot::take(&m.join("a"));
    assert_snapshots_eq(&want_snap, &got_snap, Mode::Merged, "kernel", "stratafs");
    drop(m);
    stack.assert_layers_unchanged();
}

/// A zero-size file with a whiteout xattr in a directory not marked as holding xattr
/// whiteouts: kernel overlayfs lists it and then finds no such name (only a lookup takes it
/// for a whiteout there), and so does stratafs, whether its reader wants attributes or not.
#[test]
fn an_unmarked_xattr_whiteout_is_listed_and_not_found_like_the_kernel() {
    require_root();
    let env = TestEnv::new("readdir-xwh");
    let base = env.layer("base");
    let top = env.layer("top");
    base.file("u/f", "lower");
    base.file("u/g", "lower");
    base.file("d1/x", "x");
    top.file("u/f", "");
    lsetxattr(&top.path("u/f"), b"trusted.overlay.whiteout", b"").unwrap();
    let stack = env.stack(&[&top, &base]);
    let seen = |root: &Path| {
        let names = listing(&root.join("u"));
        let f = fs::symlink_metadata(root.join("u/f"))
            .map(|_| 0)
            .unwrap_or_else(|e| e.raw_os_error().unwrap_or(-1));
        (names, f)
    };
    let kernel = stack.kernel();
    let want = seen(kernel.path());
    drop(kernel);
    assert_eq!(want.1, libc::ENOENT, "the kernel found u/f");
    for (rw, walker) in [(false, false), (false, true), (true, false), (true, true)] {
        let (upper, work) = upper_work(&env.fresh_dir("rw"));
        let m = if rw {
            stack.stratafs_rw(&UpperSpec::new(&upper, &work))
        } else {
            stack.stratafs()
        };
        let got = if walker {
            // A reader that stated nothing in the directory it read before: names only.
            listing(&m.join("d1"));
            seen(m.path())
        } else {
            // The first directory a reader (a thread) reads: full entries.
            let root = m.path().to_path_buf();
            std::thread::spawn(move || seen(&root)).join().unwrap()
        };
        let what = format!("u/ listed (rw {rw}, walker {walker})");
        compare_listing(&want.0, &got.0, &what);
        assert_eq!(got.1, want.1, "lstat u/f errno (rw {rw}, walker {walker})");
        drop(m);
    }
    stack.assert_layers_unchanged();
}

/// A directory's listing is kept while names change in other directories only: every
/// directory whose names a change touches is read afresh, and a moved directory shows its
/// new parent as `..`. Each directory is read through before the changes (so that its
/// listing is kept), changed by one operation, and read again after the kernel dropped its
/// own copies; as the kernel's overlayfs shows the same tree after the same changes.
#[test]
fn listings_kept_while_other_directories_change_show_every_change_in_theirs() {
    require_root();
    let env = TestEnv::new("readdir-kept");
    let base = env.layer("base");
    let top = env.layer("top");
    let dirs = ["a", "b", "c", "d", "e", "f", "g", "h"];
    for d in dirs.iter().chain(&["z"]) {
        base.file(format!("{d}/{d}1"), d);
    }
    top.file("a/a2", "a2");
    let stack = env.stack(&[&top, &base]);
    let change = |root: &Path| {
        // (A change before the reads, by another kind of operation than any below: the
        // daemon's record of recent changes reaches back before every listing read.)
        fs::remove_file(root.join("z/z1")).unwrap();
        fs::create_dir(root.join("f/sub")).unwrap();
        fs::write(root.join("f/sub/s1"), "s1").unwrap();
        for d in dirs.iter().chain(&["f/sub"]) {
            listing(&root.join(d));
        }
        // One change to the names of each directory but h.
        fs::write(root.join("a/new"), "new").unwrap();
        fs::remove_file(root.join("b/b1")).unwrap();
        fs::rename(root.join("e/e1"), root.join("c/moved")).unwrap();
        fs::rename(root.join("f/sub"), root.join("d/sub")).unwrap();
        fs::hard_link(root.join("h/h1"), root.join("g/link")).unwrap();
        fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
        let parent = fs::metadata(root.join("d")).unwrap().ino();
        let dotdot = read_dir_raw(&root.join("d/sub"))
            .unwrap()
            .into_iter()
            .find(|e| e.name == b"..")
            .map(|e| e.ino);
        let lists: Vec<_> = dirs
            .iter()
            .chain(&["d/sub"])
            .map(|d| listing(&root.join(d)))
            .collect();
        (lists, dotdot == Some(parent))
    };
    let (ku, kw) = upper_work(&env.fresh_dir("krw"));
    let kernel =
        KernelOverlay::writable(&stack.kernel_lowers(), &ku, &kw, &env.fresh_dir("mnt/k")).unwrap();
    let (want, kernel_dotdot) = change(kernel.path());
    drop(kernel);
    assert!(kernel_dotdot, "the kernel's d/sub/.. is not d");
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    let (got, dotdot) = change(m.path());
    for (d, (w, g)) in dirs.iter().chain(&["d/sub"]).zip(want.iter().zip(&got)) {
        compare_listing(w, g, &format!("{d}/ after the changes, kernel vs stratafs"));
    }
    assert!(dotdot, "d/sub/.. is not d after the move");
    let names = |d: usize| {
        got[d]
            .keys()
            .map(|n| n.escape_ascii().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(0), ["a1", "a2", "new"]);
    assert_eq!(names(1), Vec::<String>::new());
    assert_eq!(names(2), ["c1", "moved"]);
    assert_eq!(names(3), ["d1", "sub"]);
    drop(m);
    stack.assert_layers_unchanged();
}

/// Device nodes made through the mount are listed beside the whiteouts of their directory:
/// the daemon knows the whiteouts it made by their inode number (links of one shared
/// whiteout), and must not take another device for one. Lower files are removed (whiteouts
/// before and after the devices are made), a character device, another one and a block
/// device made, and the directory listed and its entries stat'ed, as through kernel
/// overlayfs.
#[test]
fn devices_made_beside_whiteouts_are_listed() {
    require_root();
    let env = TestEnv::new("rd-dev-wh");
    let base = env.layer("base");
    for i in 0..5 {
        base.file(format!("d/f{i}"), "x");
    }
    let stack = env.stack(&[&base]);
    let act = |root: &Path| -> Vec<String> {
        let d = root.join("d");
        for i in 0..3 {
            fs::remove_file(d.join(format!("f{i}"))).unwrap();
        }
        mknod(&d.join("null"), libc::S_IFCHR | 0o666, 1, 3).unwrap();
        mknod(&d.join("tty"), libc::S_IFCHR | 0o620, 5, 0).unwrap();
        mknod(&d.join("blk"), libc::S_IFBLK | 0o660, 7, 0).unwrap();
        fs::remove_file(d.join("f3")).unwrap();
        let mut names: Vec<String> = fs::read_dir(&d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
            .iter()
            .map(|n| {
                let md = fs::symlink_metadata(d.join(n)).unwrap();
                format!("{n} {:o} {:x}", md.mode(), md.rdev())
            })
            .collect()
    };
    let (kernel, ours) = stack.on_kernel_then_stratafs(act);
    assert_eq!(ours, kernel, "stratafs vs kernel overlay");
    assert_eq!(
        kernel
            .iter()
            .map(|l| l.split(' ').next().unwrap())
            .collect::<Vec<_>>(),
        ["blk", "f4", "null", "tty"],
        "{kernel:?}"
    );
    stack.assert_layers_unchanged();
}
