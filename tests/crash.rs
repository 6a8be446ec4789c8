//! Crash safety: `kill -9` of the daemon at a random moment during heavy copy-up and rename
//! activity, then a remount with the same upper/work. Every file must show a complete old or
//! new state, never a torn one:
//! - small lower files rewritten with the write-temp, fsync, rename-into-place protocol: each
//!   shows one complete generation (contents are a deterministic function of name and
//!   generation, self-describing);
//! - lower files (small, and large ones of 2–4 MiB) appended to (copy-up by appending; half
//!   of the large ones first become metadata-only copies through a chmod, so the append fills
//!   them in place): the whole lower content followed by a prefix of the appended stream
//!   (never a partial copy);
//! - upper files shuffled between two directories by rename: exactly one of the two names;
//! - lower files renamed (copy-up + whiteout): exactly one of the two names;
//! - no other names; the lower layers intact; the workdir clean after the remount.
//!
//! `STRATAFS_CRASH_TRIALS=N` (default 12), `STRATAFS_CRASH_SEED=S`.

mod common;

use common::*;
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SMALL: usize = 150;
const APPEND: usize = 40;
const BIG: usize = 4;
const MOVE: usize = 30;
const UP: usize = 30;

fn fnv(s: &str, k: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// Generation `g` of a rewritten file: "name:g:" and deterministic bytes.
fn content(name: &str, g: u64) -> Vec<u8> {
    let h = fnv(name, g);
    let mut v = format!("{name}:{g}:").into_bytes();
    v.extend(gen_bytes(h, 64 + (h % 6000) as usize));
    v
}

/// The lower content of an append target (2–4 MiB for the big ones).
fn base(name: &str) -> Vec<u8> {
    if name.starts_with("big/") {
        let h = fnv(name, 0);
        gen_bytes(h, (2 << 20) + (h % (2 << 20)) as usize)
    } else {
        content(name, 0)
    }
}

/// The k-th (k ≥ 1) chunk appended to an append target.
fn chunk(name: &str, k: u64) -> Vec<u8> {
    let h = fnv(name, 1000 + k);
    gen_bytes(h, 100 + (h % 20_000) as usize)
}

fn small(i: usize) -> String {
    format!("small/f{i:03}")
}
fn app(i: usize) -> String {
    format!("app/a{i:02}")
}
fn big(i: usize) -> String {
    format!("big/b{i}")
}
fn mv(i: usize) -> String {
    format!("mv/m{i:02}")
}
fn up(i: usize) -> String {
    format!("u{i:02}")
}

/// The workload, run in a child process (this test binary re-executed) against the mount
/// point in `STRATAFS_CRASH_CHILD_ROOT`. It stops at the first error (the daemon is gone).
#[test]
#[ignore = "helper: run as a child process by kill_9_during_copy_up_and_renames"]
fn crash_workload_child() {
    let Ok(root) = std::env::var("STRATAFS_CRASH_CHILD_ROOT") else {
        return;
    };
    let root = PathBuf::from(root);
    let seed: u64 = std::env::var("STRATAFS_CRASH_CHILD_SEED")
        .unwrap()
        .parse()
        .unwrap();
    let mut rng = Rng::new(seed);
    let mut gens: HashMap<String, u64> = HashMap::new();
    let mut appended: HashMap<String, u64> = HashMap::new();
    let mut in_y = [false; UP];
    let mut moved = [false; MOVE];
    let p = |r: &str| root.join(r);
    let append = |name: &str, k: u64| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new().append(true).open(p(name))?;
        f.write_all(&chunk(name, k))
    };
    let mut done = 0u64;
    let result = (|| -> std::io::Result<()> {
        for _ in 0..20_000 {
            match rng.weighted(&[30, 12, 35, 15, 8]) {
                0 => {
                    let n = app(rng.below(APPEND as u64) as usize);
                    let k = appended.entry(n.clone()).or_insert(0);
                    *k += 1;
                    append(&n, *k)?;
                }
                1 => {
                    let n = big(rng.below(BIG as u64) as usize);
                    let k = appended.entry(n.clone()).or_insert(0);
                    *k += 1;
                    // Half of the big files become metadata-only copies first, so
                    // that the append fills them in place (the crash may hit the fill).
                    if *k == 1 && rng.below(2) == 0 {
                        let mode = fs::metadata(p(&n))?.permissions();
                        fs::set_permissions(p(&n), mode)?;
                    }
                    append(&n, *k)?;
                }
                2 => {
                    let n = small(rng.below(SMALL as u64) as usize);
                    let g = gens.entry(n.clone()).or_insert(0);
                    *g += 1;
                    let tmp = format!("{n}.tmp");
                    let mut f = fs::File::create(p(&tmp))?;
                    f.write_all(&content(&n, *g))?;
                    f.sync_all()?;
                    drop(f);
                    fs::rename(p(&tmp), p(&n))?;
                }
                3 => {
                    let i = rng.below(UP as u64) as usize;
                    let (from, to) = if in_y[i] { ("y", "x") } else { ("x", "y") };
                    fs::rename(
                        p(&format!("up/{from}/{}", up(i))),
                        p(&format!("up/{to}/{}", up(i))),
                    )?;
                    in_y[i] = !in_y[i];
                }
                _ => {
                    let i = rng.below(MOVE as u64) as usize;
                    if !moved[i] {
                        fs::rename(p(&mv(i)), p(&format!("{}.moved", mv(i))))?;
                        moved[i] = true;
                    }
                }
            }
            done += 1;
            if done.is_multiple_of(50) {
                println!("progress {done}");
            }
        }
        Ok(())
    })();
    println!("workload stopped after {done} ops: {result:?}");
}

fn read(p: &Path) -> Option<Vec<u8>> {
    fs::read(p).ok()
}

/// Checks the remounted view; returns the problems.
fn verify(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut expected_names: Vec<String> = Vec::new();
    for i in 0..SMALL {
        let n = small(i);
        expected_names.push(n.clone());
        expected_names.push(format!("{n}.tmp"));
        match read(&root.join(&n)) {
            None => out.push(format!("{n}: missing")),
            Some(d) => {
                let g = std::str::from_utf8(&d[..d.len().min(40)])
                    .ok()
                    .or_else(|| {
                        // The header is ASCII; the rest may not be.
                        let end = d.iter().position(|b| !b.is_ascii()).unwrap_or(d.len());
                        std::str::from_utf8(&d[..end.min(40)]).ok()
                    })
                    .and_then(|h| h.strip_prefix(&format!("{n}:")))
                    .and_then(|r| r.split(':').next())
                    .and_then(|g| g.parse::<u64>().ok());
                match g {
                    Some(g) if d == content(&n, g) => {}
                    Some(g) => out.push(format!(
                        "{n}: torn: header says generation {g}, {} bytes, want {}",
                        d.len(),
                        content(&n, g).len()
                    )),
                    None => out.push(format!(
                        "{n}: torn: no valid header ({} bytes, starts {:?})",
                        d.len(),
                        String::from_utf8_lossy(&d[..d.len().min(24)])
                    )),
                }
            }
        }
        if let Ok(md) = fs::symlink_metadata(root.join(format!("{n}.tmp")))
            && !md.is_file()
        {
            out.push(format!("{n}.tmp: not a regular file"));
        }
    }
    let appends: Vec<String> = (0..APPEND).map(app).chain((0..BIG).map(big)).collect();
    for n in appends {
        expected_names.push(n.clone());
        let Some(d) = read(&root.join(&n)) else {
            out.push(format!("{n}: missing"));
            continue;
        };
        let b = base(&n);
        if d.len() < b.len() || d[..b.len()] != b[..] {
            let first = d.iter().zip(&b).position(|(x, y)| x != y);
            out.push(format!(
                "{n}: lower content not intact after a copy-up by append: {} bytes (lower {}), \
                 first difference at {first:?}",
                d.len(),
                b.len()
            ));
            continue;
        }
        let mut pos = b.len();
        let mut k = 1;
        while pos < d.len() {
            let c = chunk(&n, k);
            let m = c.len().min(d.len() - pos);
            if d[pos..pos + m] != c[..m] {
                out.push(format!(
                    "{n}: appended data torn at offset {pos} (chunk {k}, {} bytes total)",
                    d.len()
                ));
                break;
            }
            pos += m;
            k += 1;
        }
    }
    for i in 0..UP {
        let n = up(i);
        let x = read(&root.join(format!("up/x/{n}")));
        let y = read(&root.join(format!("up/y/{n}")));
        expected_names.push(format!("up/x/{n}"));
        expected_names.push(format!("up/y/{n}"));
        match (x, y) {
            (Some(d), None) | (None, Some(d)) => {
                if d != content(&n, 0) {
                    out.push(format!("up/*/{n}: content changed by a rename"));
                }
            }
            (None, None) => out.push(format!("up/*/{n}: lost (in neither directory)")),
            (Some(_), Some(_)) => out.push(format!("up/*/{n}: in both directories")),
        }
    }
    for i in 0..MOVE {
        let n = mv(i);
        let a = read(&root.join(&n));
        let b = read(&root.join(format!("{n}.moved")));
        expected_names.push(n.clone());
        expected_names.push(format!("{n}.moved"));
        match (a, b) {
            (Some(d), None) | (None, Some(d)) => {
                if d != content(&n, 0) {
                    out.push(format!("{n}: content changed by a rename"));
                }
            }
            (None, None) => out.push(format!("{n}: lost (neither {n} nor {n}.moved)")),
            (Some(_), Some(_)) => out.push(format!("{n}: both {n} and {n}.moved exist")),
        }
    }
    let s = Snapshot::take(root);
    for (p, e) in &s.entries {
        if e.kind == Kind::Dir {
            continue;
        }
        let name = String::from_utf8_lossy(p).into_owned();
        if !expected_names.contains(&name) {
            out.push(format!("unexpected entry {name} ({:?})", e.kind));
        }
    }
    out.extend(
        mount_invariants(&s)
            .into_iter()
            .map(|p| format!("invariant: {p}")),
    );
    out
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

fn tail(p: &Path, n: usize) -> String {
    let s = fs::read_to_string(p).unwrap_or_default();
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

#[test]
fn kill_9_during_copy_up_and_renames() {
    require_root();
    let trials = env_num("STRATAFS_CRASH_TRIALS", 12);
    let seed0 = env_num("STRATAFS_CRASH_SEED", 4242);
    let env = TestEnv::new("crash");
    let base_layer = env.layer("base");
    for i in 0..SMALL {
        base_layer.file(small(i), content(&small(i), 0));
    }
    for i in 0..APPEND {
        base_layer.file(app(i), base(&app(i)));
    }
    for i in 0..BIG {
        base_layer.file(big(i), base(&big(i)));
    }
    for i in 0..MOVE {
        base_layer.file(mv(i), content(&mv(i), 0));
    }
    let stack = env.stack(&[&base_layer]);
    let exe = std::env::current_exe().unwrap();
    let mut alive_at_kill = 0;
    for t in 0..trials {
        let seed = seed0 + t;
        let mut rng = Rng::new(seed);
        let (su, sw) = upper_work(&env.fresh_dir("trial"));
        let spec = UpperSpec::new(&su, &sw);
        let m = stack.stratafs_rw(&spec);
        fs::create_dir_all(m.join("up/x")).unwrap();
        fs::create_dir_all(m.join("up/y")).unwrap();
        for i in 0..UP {
            let mut f = fs::File::create(m.join(format!("up/x/{}", up(i)))).unwrap();
            f.write_all(&content(&up(i), 0)).unwrap();
            f.sync_all().unwrap();
        }
        let log = env.root.join(format!("child-{t}.log"));
        let logf = fs::File::create(&log).unwrap();
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_workload_child",
                "--ignored",
                "--nocapture",
            ])
            .env("STRATAFS_CRASH_CHILD_ROOT", m.path())
            .env("STRATAFS_CRASH_CHILD_SEED", seed.to_string())
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        let delay = Duration::from_millis(rng.range(30, 900));
        std::thread::sleep(delay);
        let alive = child.try_wait().unwrap().is_none();
        if alive {
            alive_at_kill += 1;
        }
        let mut problems: Vec<String> = m
            .kill9()
            .into_iter()
            .map(|p| format!("cleanup after kill -9: {p}"))
            .collect();
        let start = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                problems.push("the workload hung for 30 s after the daemon was killed".into());
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match stack.try_stratafs_rw(&spec, MountMode::Foreground) {
            Ok(m2) => {
                problems.extend(
                    workdir_leftovers(&sw)
                        .into_iter()
                        .map(|l| format!("workdir not cleaned at the remount: {l}")),
                );
                problems.extend(verify(m2.path()));
                problems.extend(m2.finish().into_iter().map(|p| format!("unmount: {p}")));
                problems.extend(
                    workdir_leftovers(&sw)
                        .into_iter()
                        .map(|l| format!("workdir not clean after the unmount: {l}")),
                );
            }
            Err(e) => problems.push(format!("remount after kill -9 failed: {e}")),
        }
        problems.extend(stack.check_layers());
        if !problems.is_empty() {
            panic!(
                "{}trial {t} (seed {seed}, killed after {} ms, workload {}): \n\
                 workload log:\n{}\nrerun: STRATAFS_CRASH_SEED={seed} STRATAFS_CRASH_TRIALS=1 \
                 cargo nextest run --test crash",
                format_problems("after kill -9 and remount", &problems),
                delay.as_millis(),
                if alive { "running" } else { "already stopped" },
                tail(&log, 5)
            );
        }
    }
    assert!(
        alive_at_kill * 2 >= trials,
        "the workload was running at the kill in only {alive_at_kill} of {trials} trials: \
         the test did not exercise crashes mid-activity (see child-*.log)"
    );
}

/// The verifier itself: a clean tree passes, and each kind of damage is reported.
#[test]
fn crash_verifier_detects_torn_states() {
    require_root();
    let env = TestEnv::new("crash-self");
    let build = |root: &Path| {
        let l = Layer::new(root.to_path_buf());
        for i in 0..SMALL {
            l.file(small(i), content(&small(i), 0));
        }
        for i in 0..APPEND {
            l.file(app(i), base(&app(i)));
        }
        for i in 0..BIG {
            l.file(big(i), base(&big(i)));
        }
        for i in 0..MOVE {
            l.file(mv(i), content(&mv(i), 0));
        }
        for i in 0..UP {
            l.file(format!("up/x/{}", up(i)), content(&up(i), 0));
        }
        l.dir("up/y");
    };
    let clean = env.fresh_dir("clean");
    build(&clean);
    // Legitimate states: a later generation, appended chunks (one partial), a moved file.
    fs::write(clean.join(small(3)), content(&small(3), 7)).unwrap();
    let mut a = base(&app(1));
    a.extend(chunk(&app(1), 1));
    a.extend(&chunk(&app(1), 2)[..10]);
    fs::write(clean.join(app(1)), a).unwrap();
    fs::rename(clean.join(mv(2)), clean.join(format!("{}.moved", mv(2)))).unwrap();
    fs::rename(
        clean.join(format!("up/x/{}", up(4))),
        clean.join(format!("up/y/{}", up(4))),
    )
    .unwrap();
    fs::write(clean.join(format!("{}.tmp", small(5))), "partial tmp").unwrap();
    assert_eq!(verify(&clean), Vec::<String>::new(), "clean tree");
    type Damage = (&'static str, fn(&Path), &'static str);
    let damages: Vec<Damage> = vec![
        (
            "torn rewrite",
            |r| fs::write(r.join(small(0)), &content(&small(0), 2)[..50]).unwrap(),
            "small/f000: torn",
        ),
        (
            "empty after rename",
            |r| fs::write(r.join(small(1)), "").unwrap(),
            "small/f001: torn",
        ),
        (
            "partial copy-up",
            |r| {
                fs::OpenOptions::new()
                    .write(true)
                    .open(r.join(big(0)))
                    .unwrap()
                    .set_len(1 << 20)
                    .unwrap()
            },
            "big/b0: lower content not intact",
        ),
        (
            "torn append",
            |r| {
                let mut f = fs::OpenOptions::new()
                    .append(true)
                    .open(r.join(app(0)))
                    .unwrap();
                f.write_all(&[0u8; 100]).unwrap();
            },
            "app/a00: appended data torn",
        ),
        (
            "rename duplicated",
            |r| {
                fs::copy(
                    r.join(format!("up/x/{}", up(0))),
                    r.join(format!("up/y/{}", up(0))),
                )
                .unwrap();
            },
            "up/*/u00: in both",
        ),
        (
            "rename lost",
            |r| fs::remove_file(r.join(mv(0))).unwrap(),
            "mv/m00: lost",
        ),
        (
            "junk",
            |r| fs::write(r.join("junk"), "x").unwrap(),
            "unexpected entry junk",
        ),
    ];
    for (what, damage, expected) in damages {
        let d = env.fresh_dir("damaged");
        build(&d);
        damage(&d);
        let problems = verify(&d);
        assert!(
            problems.iter().any(|p| p.starts_with(expected)),
            "{what}: expected a problem starting with {expected:?}, got {problems:?}"
        );
    }
}
