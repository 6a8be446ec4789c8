//! fsx-style data integrity: a file that starts in a lower layer (320 KiB of random bytes
//! with a hole in the middle) gets random writes, truncates (shrink and extend), hole
//! punches, reads, mmap reads (a MAP_SHARED read-only mapping), reads through fresh opens and
//! reopens, each checked against an in-memory model; at the end the upper file, and the file
//! after a remount, must equal the model.
//!
//! `STRATAFS_FSX_OPS=N` (default 6000; use 100000+ for a long run), `STRATAFS_FSX_SEED=S`.

mod common;

use common::*;
use std::fs;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

const MAXLEN: u64 = 1 << 20;
const LOWER_LEN: usize = 320 * 1024;

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

struct Fsx {
    model: Vec<u8>,
    log: Vec<String>,
    seed: u64,
}

impl Fsx {
    fn fail(&self, i: usize, msg: String) -> ! {
        let start = self.log.len().saturating_sub(40);
        panic!(
            "fsx (seed {}, op #{i}): {msg}\nmodel size {}\nlast ops:\n  {}\n\
             rerun: STRATAFS_FSX_SEED={} STRATAFS_FSX_OPS={} cargo nextest run --test fsx",
            self.seed,
            self.model.len(),
            self.log[start..].join("\n  "),
            self.seed,
            i + 1
        )
    }

    fn check(&self, i: usize, what: &str, off: u64, got: &[u8]) {
        let end = (off as usize + got.len()).min(self.model.len());
        let want: &[u8] = if (off as usize) < self.model.len() {
            &self.model[off as usize..end]
        } else {
            &[]
        };
        if got != want {
            let first = got
                .iter()
                .zip(want)
                .position(|(a, b)| a != b)
                .map(|p| format!("first difference at offset {}", off as usize + p))
                .unwrap_or_else(|| format!("length {} instead of {}", got.len(), want.len()));
            self.fail(i, format!("{what} at {off}: {first}"));
        }
    }
}

fn read_range(f: &fs::File, off: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let n = f.read_at(&mut buf[got..], off + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(buf)
}

/// Reads [off, off+len) through a fresh read-only MAP_SHARED mapping of the whole file.
fn mmap_read(f: &fs::File, size: usize, off: usize, len: usize) -> Result<Vec<u8>, String> {
    // SAFETY: a fresh read-only shared mapping of `size` bytes of an open file; read only
    // within [0, size) (the file is not shrunk by anyone while mapped); unmapped below.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        if p == libc::MAP_FAILED {
            return Err(format!("mmap: {}", errno_name(errno())));
        }
        let s = std::slice::from_raw_parts(p.cast::<u8>().add(off), len);
        let v = s.to_vec();
        libc::munmap(p, size);
        Ok(v)
    }
}

fn open_rw(p: &Path) -> fs::File {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

#[test]
fn fsx_on_a_file_from_a_lower_layer() {
    require_root();
    let ops = env_num("STRATAFS_FSX_OPS", 6000) as usize;
    let seed = env_num("STRATAFS_FSX_SEED", 20_251_129);
    let env = TestEnv::new("fsx");
    let base = env.layer("base");
    let mut initial = gen_bytes(seed, LOWER_LEN);
    // A hole: [96 KiB, 200 KiB) is never written in the lower file.
    for b in &mut initial[96 * 1024..200 * 1024] {
        *b = 0;
    }
    {
        let p = base.path("fsx");
        let f = fs::File::create(&p).unwrap();
        f.write_all_at(&initial[..96 * 1024], 0).unwrap();
        f.write_all_at(&initial[200 * 1024..], 200 * 1024).unwrap();
        f.sync_all().unwrap();
    }
    base.file("other", "other");
    let stack = env.stack(&[&base]);
    let (su, sw) = upper_work(&env.fresh_dir("rw"));
    let spec = UpperSpec::new(&su, &sw);
    let m = stack.stratafs_rw(&spec);
    let path = m.join("fsx");
    let mut st = Fsx {
        model: initial,
        log: Vec::new(),
        seed,
    };
    let mut rng = Rng::new(seed);
    let mut f = open_rw(&path);
    // Weights: write, read, mmap read, ftruncate, truncate(path), punch hole, fsync, reopen,
    // fresh-open read, stat.
    const W: &[u32] = &[30, 20, 12, 6, 4, 4, 2, 3, 6, 4];
    for i in 0..ops {
        let size = st.model.len() as u64;
        match rng.weighted(W) {
            0 => {
                let len = 1 + rng.below(64 * 1024) as usize;
                let off = if rng.chance(15) {
                    size.min(MAXLEN - len as u64)
                } else {
                    rng.below(MAXLEN - len as u64)
                };
                let data = gen_bytes(rng.next_u64(), len);
                st.log.push(format!("write {off} +{len}"));
                if let Err(e) = f.write_all_at(&data, off) {
                    st.fail(i, format!("write {off} +{len}: {e}"));
                }
                let end = off as usize + len;
                if st.model.len() < end {
                    st.model.resize(end, 0);
                }
                st.model[off as usize..end].copy_from_slice(&data);
            }
            1 => {
                let off = rng.below(size + 8192);
                let len = rng.below(64 * 1024) as usize;
                st.log.push(format!("read {off} +{len}"));
                match read_range(&f, off, len) {
                    Ok(got) => st.check(i, "read", off, &got),
                    Err(e) => st.fail(i, format!("read {off} +{len}: {e}")),
                }
            }
            2 => {
                if size == 0 {
                    continue;
                }
                let off = rng.below(size) as usize;
                let len = (rng.below(64 * 1024) as usize).min(size as usize - off);
                st.log.push(format!("mapread {off} +{len} (map {size})"));
                match mmap_read(&f, size as usize, off, len) {
                    Ok(got) => st.check(i, "mmap read", off as u64, &got),
                    Err(e) => st.fail(i, e),
                }
            }
            3 | 4 => {
                let len = if rng.chance(50) {
                    rng.below(size + 1)
                } else {
                    rng.below(MAXLEN)
                };
                let via_path = rng.chance(40);
                st.log.push(format!(
                    "{} {len}",
                    if via_path { "truncate" } else { "ftruncate" }
                ));
                let r = if via_path {
                    fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|g| g.set_len(len))
                } else {
                    f.set_len(len)
                };
                if let Err(e) = r {
                    st.fail(i, format!("truncate {len}: {e}"));
                }
                st.model.resize(len as usize, 0);
            }
            5 => {
                if size == 0 {
                    continue;
                }
                let off = rng.below(size);
                let len = 1 + rng.below(64 * 1024);
                st.log.push(format!("punch {off} +{len}"));
                // SAFETY: fallocate on an open fd.
                let r = unsafe {
                    libc::fallocate(
                        f.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        off as i64,
                        len as i64,
                    )
                };
                if r < 0 {
                    st.fail(i, format!("punch hole: {}", errno_name(errno())));
                }
                let end = ((off + len) as usize).min(st.model.len());
                for b in &mut st.model[off as usize..end] {
                    *b = 0;
                }
            }
            6 => {
                st.log.push("fsync".into());
                if let Err(e) = f.sync_all() {
                    st.fail(i, format!("fsync: {e}"));
                }
            }
            7 => {
                st.log.push("reopen".into());
                f = open_rw(&path);
            }
            8 => {
                let off = rng.below(size + 4096);
                let len = rng.below(128 * 1024) as usize;
                st.log.push(format!("fresh-open read {off} +{len}"));
                let g = fs::File::open(&path).unwrap();
                match read_range(&g, off, len) {
                    Ok(got) => st.check(i, "read through a fresh open", off, &got),
                    Err(e) => st.fail(i, format!("fresh read: {e}")),
                }
            }
            _ => {
                st.log.push("stat".into());
                let a = f.metadata().unwrap().len();
                let b = fs::metadata(&path).unwrap().len();
                if a != size || b != size {
                    st.fail(i, format!("size: fstat {a}, stat {b}, model {size}"));
                }
            }
        }
        if i % 1000 == 999 {
            let g = fs::File::open(&path).unwrap();
            let all = read_range(&g, 0, MAXLEN as usize + 1).unwrap();
            if all != st.model {
                st.fail(i, "full-file check differs".into());
            }
        }
    }
    drop(f);
    let all = fs::read(&path).unwrap();
    if all != st.model {
        st.fail(ops, "final content differs".into());
    }
    m.unmount();
    let up = fs::read(su.join("fsx")).unwrap();
    if up != st.model {
        st.fail(
            ops,
            "upper file differs from the model after unmount".into(),
        );
    }
    let m = stack.stratafs_rw(&spec);
    if fs::read(m.join("fsx")).unwrap() != st.model {
        st.fail(ops, "content differs after remount".into());
    }
    m.unmount();
    assert_eq!(workdir_leftovers(&sw), Vec::<String>::new());
}
