//! `stratafs diff` and `stratafs commit` (issue 7) through the real binary and real mounts.
//!
//! One scripted set of changes on a writable mount of a 2-layer fixture: create (a file, a
//! nested directory), modify, chmod (a metadata-only copy-up), delete a lower file, `rm -r` a
//! merged lower directory, `rm -r` + re-create a directory (opaque), rename a lower directory
//! with content (a redirect), rename a lower file (a metadata-only copy with a redirect),
//! append through one name of a lower file with three hard links (two of them in other
//! directories, never looked up by the script), a symlink, an xattr, a FIFO, a file replaced
//! by a directory, and a new file whose name sorts before `.wh.` in a directory with a
//! deletion. Then:
//!
//! - `diff` prints exactly the hand-written list ([`EXPECTED`]) for the live mount point (also
//!   given relative), the upper directory of the live mount, the unmounted upper with
//!   `--lower/--work` and without `--work`; `--json` gives the same list; nothing is left in
//!   the private `$TMPDIR` of the command; the view is unchanged by it, and so is what the
//!   unmounted upper means (remounted: the same tree);
//! - `commit --image NEW -m ... --oci-tar x.tar` of the live mount (with a file open
//!   read-only in it): the digest and `image: NEW`; NEW is the lower layers (the digests of
//!   `layer import` of the directories) plus the new one; `mount NEW` shows, entry by entry,
//!   the view that was committed (directory sizes aside: the host's bookkeeping); the mount
//!   keeps its options and stays writable (a write after the commit lands in the upper);
//!   a second commit (`--json`) gives the same digest ("existed") and the same tar bytes;
//!   the tar is the exact entry list, each directory before its content, whiteouts before
//!   their siblings, one `.wh..wh..opq` (the re-created directory), the data of the
//!   metadata-only copies, one file and two hard links for the linked group, the xattr as a
//!   PAX record; it imports to the same digest in a fresh store;
//! - `umoci`: an OCI layout made with `umoci init/new` + `umoci raw add-layer` of the exported
//!   lower layers and the committed tar; `umoci unpack` gives the committed view (umoci does
//!   not reproduce the root's mtime and directory sizes: left out, see
//!   `common::oci::umoci_problems`);
//! - the unmounted upper (after the write) committed with `--lower` as NEW2: `mount NEW2` is
//!   the view before the unmount; no scratch work directory is left beside it;
//! - refused while a file is open for writing: one `stratafs:` line saying so, the mount still
//!   writable with the same options, the view and the upper unchanged, nothing stored; once
//!   the file is closed the commit works and the mount stays writable;
//! - a `run --keep-upper` over a stored image, then `diff --from IMAGE` and `commit --from
//!   IMAGE --image NEW`: NEW = the image's layers + one, and mounts as the kernel shows the
//!   kept upper over the layers;
//! - refusals: a read-only mount, a directory that is neither a mount nor given lower layers,
//!   a file;
//! - the mount registry that `diff MOUNT` trusts is not writable by other users (a record
//!   planted there names the layers and the "live mount" that root's `diff`/`commit` read
//!   and freeze).
//!
//! Lower layers are checked bit-identical after every test (`Stack`), store trees after the
//! image mounts.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::oci::{
    StoreDir, mount_image, umoci_layout, umoci_problems, umoci_unpack, zero_dir_sizes,
};
use common::*;

const T: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Fixture and script
// ---------------------------------------------------------------------------------------------

/// Two layers, bottom `l1` and top `l2`, with fixed old timestamps.
fn fixture(env: &TestEnv) -> (Layer, Layer) {
    let l1 = env.layer("l1");
    l1.file("keep.txt", "keep\n");
    l1.file("mod.txt", "mod\n");
    l1.file("chmod.txt", "chmod\n");
    l1.file("del.txt", "del\n");
    l1.file("tree/a", "a\n");
    l1.file("tree/sub/b", "b\n");
    l1.file("redo/old1", "old1\n");
    l1.file("redo/old2", "old2\n");
    l1.file("movedir/f1", "f1\n");
    l1.file("movedir/inner/f2", "f2\n");
    l1.file("ren.txt", "ren\n");
    l1.file("hl1", "hl\n");
    l1.hardlink("hl1", "hl2");
    l1.hardlink("hl1", "links/hl3");
    l1.file("xattr.txt", "x\n");
    l1.file("docs/readme", "readme\n");
    l1.file("docs/old.md", "old\n");
    l1.file("typechg", "file\n");
    l1.file("gone.txt", "gone\n");
    l1.file("owned.txt", "owned\n")
        .owner(1234, 4321)
        .mode(0o640);
    let l2 = env.layer("l2");
    l2.file("tree/c", "c\n");
    l2.file("movedir/f3", "f3\n");
    l2.file("top.txt", "top\n");
    l2.whiteout("gone.txt", Whiteout::CharDev);
    fix_times(&l1.root);
    fix_times(&l2.root);
    (l1, l2)
}

fn must(what: &str, r: std::io::Result<()>) {
    if let Err(e) = r {
        panic!("script step {what}: {e}");
    }
}

fn append(p: &Path, data: &str) -> std::io::Result<()> {
    fs::OpenOptions::new()
        .append(true)
        .open(p)?
        .write_all(data.as_bytes())
}

/// The scripted changes, through the mount at `m`.
fn apply_script(m: &Path) {
    must("write new.txt", fs::write(m.join("new.txt"), "new\n"));
    must(
        "mkdir -p newdir/inner",
        fs::create_dir_all(m.join("newdir/inner")),
    );
    must(
        "write newdir/inner/file",
        fs::write(m.join("newdir/inner/file"), "file\n"),
    );
    must("append mod.txt", append(&m.join("mod.txt"), "more\n"));
    must(
        "chmod 600 chmod.txt",
        fs::set_permissions(m.join("chmod.txt"), fs::Permissions::from_mode(0o600)),
    );
    must("rm del.txt", fs::remove_file(m.join("del.txt")));
    must("rm -r tree", fs::remove_dir_all(m.join("tree")));
    must("rm -r redo", fs::remove_dir_all(m.join("redo")));
    must("mkdir redo", fs::create_dir(m.join("redo")));
    must(
        "write redo/fresh",
        fs::write(m.join("redo/fresh"), "fresh\n"),
    );
    must(
        "mv movedir moved",
        fs::rename(m.join("movedir"), m.join("moved")),
    );
    must(
        "mv ren.txt ren2.txt",
        fs::rename(m.join("ren.txt"), m.join("ren2.txt")),
    );
    must("append hl1", append(&m.join("hl1"), "appended\n"));
    must(
        "symlink link",
        std::os::unix::fs::symlink("keep.txt", m.join("link")),
    );
    must(
        "setxattr xattr.txt",
        lsetxattr(&m.join("xattr.txt"), b"user.test", b"v"),
    );
    must(
        "mkfifo fifo",
        mknod(&m.join("fifo"), libc::S_IFIFO | 0o644, 0, 0),
    );
    must(
        "write docs/new.md",
        fs::write(m.join("docs/new.md"), "new\n"),
    );
    must(
        "write docs/-first",
        fs::write(m.join("docs/-first"), "first\n"),
    );
    must("rm docs/old.md", fs::remove_file(m.join("docs/old.md")));
    must("rm typechg", fs::remove_file(m.join("typechg")));
    must("mkdir typechg", fs::create_dir(m.join("typechg")));
    must(
        "write typechg/inside",
        fs::write(m.join("typechg/inside"), "inside\n"),
    );
}

/// What `diff` must print for [`apply_script`], written out by hand (sorted by path bytes,
/// as `docker diff`: `-` < `.` < `/` < letters).
const EXPECTED: &str = "\
C /chmod.txt
D /del.txt
C /docs
A /docs/-first
A /docs/new.md
D /docs/old.md
A /fifo
C /hl1
C /hl2
A /link
C /links/hl3
C /mod.txt
A /moved
A /moved/f1
A /moved/f3
A /moved/inner
A /moved/inner/f2
D /movedir
A /new.txt
A /newdir
A /newdir/inner
A /newdir/inner/file
C /redo
A /redo/fresh
D /redo/old1
D /redo/old2
D /ren.txt
A /ren2.txt
D /tree
C /typechg
A /typechg/inside
C /xattr.txt
";

// ---------------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------------

/// `stratafs [--store STORE] ARGS` with a private `$TMPDIR`.
fn cli(tmp: &Path, store: Option<&Path>) -> Command {
    let mut c = Command::new(stratafs_bin());
    if let Some(s) = store {
        c.arg("--store").arg(s);
    }
    c.env("TMPDIR", tmp).env_remove("STRATAFS_STORE");
    c
}

/// Runs a command that must succeed with nothing on stderr and nothing left in `tmp`; its
/// stdout.
fn ok(cmd: &mut Command, tmp: &Path) -> String {
    let desc = format!("{cmd:?}");
    let out = run_timeout(cmd, T);
    assert!(
        out.success() && out.stderr.is_empty(),
        "{desc}: {}",
        out.describe()
    );
    let l = tmp_leftovers(tmp);
    assert!(l.is_empty(), "after {desc}: {l:#?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command that must be refused: status 1, one `stratafs: ` line; that line.
fn refused(cmd: &mut Command, tmp: &Path) -> String {
    let desc = format!("{cmd:?}");
    let out = run_timeout(cmd, T);
    assert_eq!(
        out.status.and_then(|s| s.code()),
        Some(1),
        "{desc}: {}",
        out.describe()
    );
    let err = out.stderr_str();
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("stratafs: "),
        "{desc}: expected one `stratafs: ` line, got {err:?}"
    );
    let l = tmp_leftovers(tmp);
    assert!(l.is_empty(), "after {desc}: {l:#?}");
    lines[0].to_string()
}

fn lower_args(stack: &Stack<'_>) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for l in &stack.lowers {
        v.push(PathBuf::from("--lower"));
        v.push(l.clone());
    }
    v
}

fn mount_options(mnt: &Path) -> Vec<(String, String)> {
    mounts_at(mnt)
        .into_iter()
        .map(|m| (m.options, m.super_options))
        .collect()
}

fn digest_line(s: &str) -> String {
    assert!(
        s.len() == 71 && s.starts_with("sha256:"),
        "not a digest: {s:?}"
    );
    s.to_string()
}

/// The merged comparison with directory sizes left out (the host's bookkeeping: a committed
/// or imported tree is other directories than the view's).
fn view_diff(a: &Snapshot, b: &Snapshot, la: &str, lb: &str) -> Vec<String> {
    let (mut a, mut b) = (a.clone(), b.clone());
    zero_dir_sizes(&mut a);
    zero_dir_sizes(&mut b);
    snapshot_diff(&a, &b, Mode::Merged, la, lb)
}

fn assert_view_eq(a: &Snapshot, b: &Snapshot, la: &str, lb: &str) {
    let d = view_diff(a, b, la, lb);
    assert!(
        d.is_empty(),
        "{}",
        format_problems(&format!("{la} vs {lb}"), &d)
    );
}

fn store_trees(store: &Path, digests: &[String]) -> Vec<PathBuf> {
    digests
        .iter()
        .map(|d| {
            let t = store
                .join("layers/sha256")
                .join(d.strip_prefix("sha256:").unwrap())
                .join("tree");
            assert!(t.is_dir(), "store layout: no {}", t.display());
            t
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// diff
// ---------------------------------------------------------------------------------------------

#[test]
fn diff_lists_exactly_the_scripted_changes() {
    require_root();
    let env = TestEnv::new("diff-script");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let tmp = env.fresh_dir("tmp");
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    apply_script(m.path());
    let view = Snapshot::take(m.path());

    let out = ok(cli(&tmp, None).arg("diff").arg(m.path()), &tmp);
    assert_eq!(out, EXPECTED, "diff MOUNTPOINT");
    let rel = m.path().strip_prefix(&env.root).unwrap();
    let out = ok(
        cli(&tmp, None).current_dir(&env.root).arg("diff").arg(rel),
        &tmp,
    );
    assert_eq!(out, EXPECTED, "diff of the mount point given relative");
    let out = ok(cli(&tmp, None).arg("diff").arg(&upper), &tmp);
    assert_eq!(out, EXPECTED, "diff UPPER of a live mount");
    let out = ok(cli(&tmp, None).args(["diff", "--json"]).arg(m.path()), &tmp);
    let json: serde_json::Value = serde_json::from_str(&out).expect("diff --json");
    let listed: Vec<String> = json
        .as_array()
        .expect("diff --json: an array")
        .iter()
        .map(|c| {
            let letter = match c["kind"].as_str() {
                Some("Added") => "A",
                Some("Changed") => "C",
                Some("Deleted") => "D",
                other => panic!("diff --json: kind {other:?}"),
            };
            format!("{letter} {}\n", c["path"].as_str().unwrap())
        })
        .collect();
    assert_eq!(listed.concat(), EXPECTED, "diff --json");
    assert_view_unchanged(&view, m.path(), "the view changed during diff");
    m.unmount();
    let left = workdir_leftovers(&work);
    assert!(left.is_empty(), "workdir after unmount: {left:?}");

    // The unmounted upper, with its lower layers named.
    let out = ok(
        cli(&tmp, None)
            .arg("diff")
            .arg(&upper)
            .args(lower_args(&stack))
            .arg("--work")
            .arg(&work),
        &tmp,
    );
    assert_eq!(out, EXPECTED, "diff UPPER --lower ... --work WORK");
    let out = ok(
        cli(&tmp, None)
            .arg("diff")
            .arg(&upper)
            .args(lower_args(&stack)),
        &tmp,
    );
    assert_eq!(out, EXPECTED, "diff UPPER --lower ... (no --work)");
    assert_eq!(
        names_in(upper.parent().unwrap()),
        vec!["upper".to_string(), "work".to_string()],
        "beside the upper after diff without --work (a scratch work directory left?)"
    );
    let left = workdir_leftovers(&work);
    assert!(left.is_empty(), "workdir after the diffs: {left:?}");

    // What the upper means is unchanged by the diffs.
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    let again = Snapshot::take(m.path());
    m.unmount();
    let d = snapshot_diff(
        &view,
        &again,
        Mode::Merged,
        "view",
        "remounted after the diffs",
    );
    assert!(
        d.is_empty(),
        "{}",
        format_problems("the upper after diffs of it", &d)
    );
    stack.assert_layers_unchanged();
}

#[test]
fn diff_and_commit_refusals() {
    require_root();
    let env = TestEnv::new("diff-refuse");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let tmp = env.fresh_dir("tmp");
    let store = env.path("store");
    let ro = stack.stratafs();
    for sub in ["diff", "commit"] {
        let line = refused(cli(&tmp, Some(&store)).arg(sub).arg(ro.path()), &tmp);
        assert!(
            line.contains("read-only"),
            "{sub} of a read-only mount: {line}"
        );
    }
    let plain = env.fresh_dir("plain");
    for sub in ["diff", "commit"] {
        let line = refused(cli(&tmp, Some(&store)).arg(sub).arg(&plain), &tmp);
        assert!(
            line.contains("--lower"),
            "{sub} of a directory that is not a mount: the message should say how to name the lower layers: {line}"
        );
    }
    let file = env.path("a-file");
    fs::write(&file, "x").unwrap();
    let line = refused(
        cli(&tmp, None)
            .arg("diff")
            .arg(&file)
            .args(lower_args(&stack)),
        &tmp,
    );
    assert!(line.contains("not a directory"), "diff of a file: {line}");
    drop(ro);
    stack.assert_layers_unchanged();
}

// ---------------------------------------------------------------------------------------------
// commit
// ---------------------------------------------------------------------------------------------

/// Kind of a tar entry: D dir, F file, H hard link, S symlink, P fifo, W whiteout (`.wh.X`),
/// O opaque marker (`.wh..wh..opq`).
#[derive(Debug, Clone)]
struct TarItem {
    path: String,
    kind: char,
    mode: u32,
    data: Vec<u8>,
    link: String,
    xattrs: Vec<(String, Vec<u8>)>,
}

fn read_tar(bytes: &[u8]) -> Vec<TarItem> {
    let mut a = tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in a.entries().expect("tar entries") {
        let mut e = e.expect("tar entry");
        let raw = String::from_utf8(e.path_bytes().to_vec()).expect("UTF-8 tar path");
        let mut path = raw
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_string();
        if path.is_empty() {
            path = ".".into();
        }
        let name = path.rsplit('/').next().unwrap().to_string();
        let ty = e.header().entry_type();
        let kind = match ty {
            tar::EntryType::Directory => 'D',
            tar::EntryType::Link => 'H',
            tar::EntryType::Symlink => 'S',
            tar::EntryType::Fifo => 'P',
            tar::EntryType::Regular if name == ".wh..wh..opq" => 'O',
            tar::EntryType::Regular if name.starts_with(".wh.") => 'W',
            tar::EntryType::Regular => 'F',
            other => panic!("{path}: unexpected tar entry type {other:?}"),
        };
        let mut xattrs = Vec::new();
        if let Some(pax) = e.pax_extensions().expect("pax") {
            for x in pax {
                let x = x.expect("pax record");
                if let Some(k) = x.key().ok().and_then(|k| k.strip_prefix("SCHILY.xattr.")) {
                    xattrs.push((k.to_string(), x.value_bytes().to_vec()));
                }
            }
        }
        let link = e
            .link_name_bytes()
            .map(|l| {
                String::from_utf8_lossy(&l)
                    .trim_start_matches("./")
                    .to_string()
            })
            .unwrap_or_default();
        let mode = e.header().mode().unwrap();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push(TarItem {
            path,
            kind,
            mode,
            data,
            link,
            xattrs,
        });
    }
    out
}

fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(i) => &p[..i],
        None => ".",
    }
}

/// The committed tar of [`apply_script`]: the exact entries, their order rules and content.
fn tar_problems(items: &[TarItem]) -> Vec<String> {
    let mut out = Vec::new();
    let mut got: Vec<(String, char)> = items.iter().map(|i| (i.path.clone(), i.kind)).collect();
    // The linked group: one file, two hard links to it (which name carries the data is the
    // writer's choice).
    let group = ["hl1", "hl2", "links/hl3"];
    let members: Vec<&TarItem> = items
        .iter()
        .filter(|i| group.contains(&i.path.as_str()))
        .collect();
    let files: Vec<&&TarItem> = members.iter().filter(|i| i.kind == 'F').collect();
    if members.len() != 3 || files.len() != 1 {
        out.push(format!(
            "hard-link group {group:?}: expected one file and two links, got {:?}",
            members
                .iter()
                .map(|i| (&i.path, i.kind))
                .collect::<Vec<_>>()
        ));
    } else {
        let target = &files[0].path;
        for m in &members {
            if m.kind == 'H' && &m.link != target {
                out.push(format!(
                    "{}: a link to {:?}, not to {target}",
                    m.path, m.link
                ));
            }
        }
        if files[0].data != b"hl\nappended\n" {
            out.push(format!(
                "{target}: data {:?}",
                String::from_utf8_lossy(&files[0].data)
            ));
        }
    }
    for g in &mut got {
        if group.contains(&g.0.as_str()) {
            g.1 = 'L';
        }
    }
    let mut expected: Vec<(String, char)> = [
        (".", 'D'),
        (".wh.del.txt", 'W'),
        (".wh.movedir", 'W'),
        (".wh.ren.txt", 'W'),
        (".wh.tree", 'W'),
        ("chmod.txt", 'F'),
        ("docs", 'D'),
        ("docs/-first", 'F'),
        ("docs/.wh.old.md", 'W'),
        ("docs/new.md", 'F'),
        ("fifo", 'P'),
        ("hl1", 'L'),
        ("hl2", 'L'),
        ("link", 'S'),
        ("links", 'D'),
        ("links/hl3", 'L'),
        ("mod.txt", 'F'),
        ("moved", 'D'),
        ("moved/f1", 'F'),
        ("moved/f3", 'F'),
        ("moved/inner", 'D'),
        ("moved/inner/f2", 'F'),
        ("new.txt", 'F'),
        ("newdir", 'D'),
        ("newdir/inner", 'D'),
        ("newdir/inner/file", 'F'),
        ("redo", 'D'),
        ("redo/.wh..wh..opq", 'O'),
        ("redo/fresh", 'F'),
        ("ren2.txt", 'F'),
        ("typechg", 'D'),
        ("typechg/inside", 'F'),
        ("xattr.txt", 'F'),
    ]
    .iter()
    .map(|(p, k)| (p.to_string(), *k))
    .collect();
    expected.sort();
    let mut sorted = got.clone();
    sorted.sort();
    if sorted != expected {
        let only_got: Vec<_> = sorted.iter().filter(|x| !expected.contains(x)).collect();
        let only_exp: Vec<_> = expected.iter().filter(|x| !sorted.contains(x)).collect();
        out.push(format!(
            "tar entries differ: unexpected {only_got:?}, missing {only_exp:?}"
        ));
    }
    // Order: a directory before its content; in a directory, whiteouts (and the opaque
    // marker) before every other entry; a hard link after its target.
    let pos = |p: &str| items.iter().position(|i| i.path == p);
    for (i, it) in items.iter().enumerate() {
        if it.path != "." {
            match pos(parent(&it.path)) {
                Some(j) if j < i => {}
                other => out.push(format!(
                    "{} at {i}: its directory {} is at {other:?}",
                    it.path,
                    parent(&it.path)
                )),
            }
        }
        if matches!(it.kind, 'W' | 'O') {
            for (j, sib) in items.iter().enumerate().take(i) {
                if sib.path != "."
                    && parent(&sib.path) == parent(&it.path)
                    && !matches!(sib.kind, 'W' | 'O')
                {
                    out.push(format!(
                        "whiteout {} at {i} comes after its sibling {} at {j}",
                        it.path, sib.path
                    ));
                }
            }
        }
        if it.kind == 'H' {
            match pos(&it.link) {
                Some(j) if j < i => {}
                other => out.push(format!(
                    "hard link {} at {i} to {} at {other:?}",
                    it.path, it.link
                )),
            }
        }
    }
    let get = |p: &str| items.iter().find(|i| i.path == p);
    let content = |p: &str, want: &[u8], out: &mut Vec<String>| match get(p) {
        Some(i) if i.data == want => {}
        other => out.push(format!(
            "{p}: expected data {:?}, got {:?}",
            String::from_utf8_lossy(want),
            other.map(|i| String::from_utf8_lossy(&i.data).into_owned())
        )),
    };
    content("chmod.txt", b"chmod\n", &mut out);
    content("ren2.txt", b"ren\n", &mut out);
    content("xattr.txt", b"x\n", &mut out);
    content("mod.txt", b"mod\nmore\n", &mut out);
    content("moved/inner/f2", b"f2\n", &mut out);
    content("moved/f3", b"f3\n", &mut out);
    for w in items.iter().filter(|i| matches!(i.kind, 'W' | 'O')) {
        if !w.data.is_empty() {
            out.push(format!("{}: a whiteout with data", w.path));
        }
    }
    if get("chmod.txt").is_some_and(|i| i.mode & 0o7777 != 0o600) {
        out.push(format!(
            "chmod.txt: mode {:o}",
            get("chmod.txt").unwrap().mode
        ));
    }
    if get("link").is_some_and(|i| i.link != "keep.txt") {
        out.push(format!("link -> {:?}", get("link").unwrap().link));
    }
    match get("xattr.txt") {
        Some(i) if i.xattrs == vec![("user.test".to_string(), b"v".to_vec())] => {}
        other => out.push(format!(
            "xattr.txt: expected the PAX record SCHILY.xattr.user.test=v, got {:?}",
            other.map(|i| &i.xattrs)
        )),
    }
    out
}

#[test]
fn commit_to_an_image_an_oci_tar_and_through_umoci() {
    require_root();
    let env = TestEnv::new("commit-script");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let tmp = env.fresh_dir("tmp");
    let store = env.path("store");
    let sd = StoreDir::new(&store);
    let c1 = env.path("c1.tar");
    let c2 = env.path("c2.tar");

    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    apply_script(m.path());
    let view = Snapshot::take(m.path());
    let opts = mount_options(m.path());
    assert_eq!(opts.len(), 1, "mounts at {}: {opts:?}", m.path().display());
    assert!(opts[0].0.split(',').any(|o| o == "rw"), "{opts:?}");

    // A file open read-only does not prevent the commit.
    let reader = fs::File::open(m.path().join("keep.txt")).unwrap();
    let out = ok(
        cli(&tmp, Some(&store))
            .arg("commit")
            .arg(m.path())
            .args(["--image", "new", "-m", "the scripted changes", "--oci-tar"])
            .arg(&c1),
        &tmp,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "commit --image output: {out:?}");
    let digest = digest_line(lines[0]);
    assert_eq!(lines[1], "image: new", "commit --image output: {out:?}");
    let out = ok(
        cli(&tmp, Some(&store))
            .arg("commit")
            .arg(m.path())
            .args(["--json", "--oci-tar"])
            .arg(&c2),
        &tmp,
    );
    let j: serde_json::Value = serde_json::from_str(&out).expect("commit --json");
    assert_eq!(j["digest"], serde_json::json!(digest), "second commit: {j}");
    assert_eq!(j["existed"], serde_json::json!(true), "second commit: {j}");
    assert_eq!(j["image"], serde_json::Value::Null, "second commit: {j}");
    assert_eq!(
        j["changes"],
        serde_json::json!(EXPECTED.lines().count()),
        "second commit: {j}"
    );
    drop(reader);
    let t1 = fs::read(&c1).unwrap();
    assert_eq!(
        t1,
        fs::read(&c2).unwrap(),
        "two commits of one view: other tar bytes"
    );

    // The live mount: unchanged, same options, still writable.
    assert_eq!(
        mount_options(m.path()),
        opts,
        "mount options after the commits"
    );
    assert_view_unchanged(&view, m.path(), "the view changed during the commits");
    fs::write(m.path().join("after-commit.txt"), "later\n")
        .expect("the mount should be writable after a commit");
    assert_eq!(
        fs::read(upper.join("after-commit.txt")).unwrap(),
        b"later\n",
        "a write after the commit lands in the upper"
    );
    let view2 = Snapshot::take(m.path());
    m.unmount();

    // The image: the lower layers as stored by `layer import`, then the new layer.
    let d1 = sd.import_layer(&l1.root);
    let d2 = sd.import_layer(&l2.root);
    assert_eq!(
        sd.image_layers("new"),
        vec![d1.clone(), d2.clone(), digest.clone()],
        "layers of the committed image (bottom first)"
    );
    let trees = store_trees(&store, &[digest.clone(), d2.clone(), d1.clone()]);
    let store_stack = env.stack_paths(trees);
    {
        let im = mount_image(&store_stack, &sd, "new", &[]);
        let s = Snapshot::take(im.path());
        assert_view_eq(&view, &s, "committed view", "mount of the committed image");
    }

    // The tar: entries, order, content; the same digest when imported elsewhere.
    let problems = tar_problems(&read_tar(&t1));
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("the committed tar", &problems)
    );
    let fresh = env.path("fresh-store");
    let out = ok(
        cli(&tmp, Some(&fresh)).args(["layer", "import"]).arg(&c1),
        &tmp,
    );
    assert_eq!(
        out.split_whitespace().next(),
        Some(digest.as_str()),
        "the committed tar imported into a fresh store: {out}"
    );

    // umoci: the exported lower layers and the committed tar, unpacked.
    let e1 = env.path("l1.tar");
    let e2 = env.path("l2.tar");
    sd.export_layer(&d1, &e1);
    sd.export_layer(&d2, &e2);
    let layout = env.path("oci");
    umoci_layout(&layout, "t", &[e1, e2, c1.clone()]);
    let rootfs = umoci_unpack(&layout, "t", &env.path("bundle"));
    let u = Snapshot::take(&rootfs);
    let problems = umoci_problems(&u, &view, &[]);
    assert!(
        problems.is_empty(),
        "{}",
        format_problems("umoci unpack vs the committed view", &problems)
    );

    // The unmounted upper (after the write), committed with its lower layers named.
    let out = ok(
        cli(&tmp, None)
            .arg("diff")
            .arg(&upper)
            .args(lower_args(&stack))
            .arg("--work")
            .arg(&work),
        &tmp,
    );
    assert_eq!(
        out,
        format!("A /after-commit.txt\n{EXPECTED}"),
        "diff of the unmounted upper after the write"
    );
    let out = ok(
        cli(&tmp, Some(&store))
            .arg("commit")
            .arg(&upper)
            .args(lower_args(&stack))
            .args(["--image", "new2"]),
        &tmp,
    );
    let digest2 = digest_line(out.lines().next().unwrap());
    assert_eq!(out.lines().nth(1), Some("image: new2"));
    assert_ne!(digest2, digest);
    assert_eq!(
        names_in(upper.parent().unwrap()),
        vec!["upper".to_string(), "work".to_string()],
        "beside the upper after commit without --work"
    );
    assert_eq!(
        sd.image_layers("new2"),
        vec![d1.clone(), d2.clone(), digest2.clone()]
    );
    let trees2 = store_trees(&store, &[digest2.clone(), d2.clone(), d1.clone()]);
    let store_stack2 = env.stack_paths(trees2);
    {
        let im = mount_image(&store_stack2, &sd, "new2", &[]);
        let s = Snapshot::take(im.path());
        assert_view_eq(&view2, &s, "view before the unmount", "mount of new2");
    }
    drop(store_stack2);
    drop(store_stack);
    stack.assert_layers_unchanged();
}

#[test]
fn commit_is_refused_while_a_file_is_open_for_writing() {
    require_root();
    let env = TestEnv::new("commit-busy");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    let tmp = env.fresh_dir("tmp");
    let store = env.path("store");
    let sd = StoreDir::new(&store);
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    must(
        "write new.txt",
        fs::write(m.path().join("new.txt"), "new\n"),
    );
    must(
        "append mod.txt",
        append(&m.path().join("mod.txt"), "more\n"),
    );
    let opts = mount_options(m.path());
    let view = Snapshot::take(m.path());
    let up = Snapshot::take(&upper);

    let mut writer = fs::OpenOptions::new()
        .append(true)
        .open(m.path().join("new.txt"))
        .unwrap();
    let line = refused(
        cli(&tmp, Some(&store))
            .arg("commit")
            .arg(m.path())
            .args(["--image", "x"]),
        &tmp,
    );
    assert!(
        line.contains("open for writing"),
        "the refusal should say why: {line}"
    );
    assert_eq!(
        mount_options(m.path()),
        opts,
        "mount options after the refused commit"
    );
    assert_view_unchanged(&view, m.path(), "the view after the refused commit");
    assert_dir_unchanged(&up, &upper, "the upper after the refused commit");
    if store.exists() {
        assert_eq!(
            sd.layer_digests(),
            Vec::<String>::new(),
            "layers stored by a refused commit"
        );
        let images: serde_json::Value =
            serde_json::from_str(&sd.ok(&["image", "ls", "--json"])).unwrap();
        assert_eq!(
            images,
            serde_json::json!([]),
            "images after a refused commit"
        );
    }
    // Still writable, through the open file and anew.
    writer
        .write_all(b"through the open file\n")
        .expect("write through the file open during the refused commit");
    drop(writer);
    fs::write(m.path().join("second.txt"), "2\n").expect("create after the refused commit");

    let out = ok(cli(&tmp, Some(&store)).arg("commit").arg(m.path()), &tmp);
    digest_line(out.trim_end());
    assert_eq!(
        mount_options(m.path()),
        opts,
        "mount options after the commit"
    );
    fs::write(m.path().join("third.txt"), "3\n").expect("write after the commit");
    assert_eq!(fs::read(upper.join("third.txt")).unwrap(), b"3\n");
    assert_eq!(
        fs::read(m.path().join("new.txt")).unwrap(),
        b"new\nthrough the open file\n"
    );
    m.unmount();
    stack.assert_layers_unchanged();
}

#[test]
fn run_keep_upper_over_an_image_then_commit_from_it() {
    require_root();
    let env = TestEnv::new("commit-from");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let store = env.path("store");
    let sd = StoreDir::new(&store);
    let [d1, d2] = sd.image_from("img", [&l1.root, &l2.root]);
    let trees = store_trees(&store, &[d2.clone(), d1.clone()]);
    let store_stack = env.stack_paths(trees.clone());
    let tmp = env.fresh_dir("tmp");
    let kept = env.fresh_dir("keep").join("upper");

    let script = "set -e; echo new > new.txt; echo more >> mod.txt; rm del.txt; \
                  rm -r tree; mv movedir moved; chmod 600 chmod.txt; mkdir -p a/b; echo x > a/b/c";
    let out = run_timeout(
        cli(&tmp, Some(&store))
            .args(["run", "img", "--keep-upper"])
            .arg(&kept)
            .args(["--", "sh", "-c", script]),
        T,
    );
    assert!(out.success(), "run img --keep-upper: {}", out.describe());
    let l = tmp_leftovers(&tmp);
    assert!(l.is_empty(), "after the run: {l:#?}");
    let expected = "\
A /a
A /a/b
A /a/b/c
C /chmod.txt
D /del.txt
C /mod.txt
A /moved
A /moved/f1
A /moved/f3
A /moved/inner
A /moved/inner/f2
D /movedir
A /new.txt
D /tree
";
    let out = ok(
        cli(&tmp, Some(&store))
            .arg("diff")
            .arg(&kept)
            .args(["--from", "img"]),
        &tmp,
    );
    assert_eq!(out, expected, "diff KEPT --from img");
    let out = ok(
        cli(&tmp, Some(&store))
            .arg("commit")
            .arg(&kept)
            .args(["--from", "img", "--image", "img2"]),
        &tmp,
    );
    let digest = digest_line(out.lines().next().unwrap());
    assert_eq!(out.lines().nth(1), Some("image: img2"));
    assert_eq!(
        sd.image_layers("img2"),
        vec![d1.clone(), d2.clone(), digest.clone()],
        "img2 = img's layers + the new one"
    );
    // The kernel over the kept upper and the original directories vs a mount of img2.
    let mut klowers = vec![kept.clone()];
    klowers.extend(stack.kernel_lowers());
    let kmnt = env.fresh_dir("mnt/k");
    let k = KernelOverlay::lower_only(&klowers, &kmnt).unwrap();
    let ks = Snapshot::take(k.path());
    let mut all = store_trees(&store, std::slice::from_ref(&digest));
    all.extend(trees);
    let store_stack2 = env.stack_paths(all);
    {
        let im = mount_image(&store_stack2, &sd, "img2", &[]);
        let s = Snapshot::take(im.path());
        // The root's mtime: the kept upper's root was written by the run; the image's root is
        // the committed layer's, which records the view's root: both the same moment.
        assert_view_eq(&ks, &s, "kernel over the kept upper", "mount of img2");
    }
    drop(k);
    drop(store_stack2);
    drop(store_stack);
    stack.assert_layers_unchanged();
}

// ---------------------------------------------------------------------------------------------
// The mount registry
// ---------------------------------------------------------------------------------------------

/// `diff MOUNT`/`commit MOUNT` (and `diff UPPER`) take the lower layers, the upper and the
/// mount point to freeze from the registry of live mounts, ahead of any `--lower` given. For
/// root that is `/run/stratafs/mounts`: another user must not be able to add or change a
/// record there (one planted for an upper root later commits makes root's `diff` report, and
/// `commit` store, the planted "mount point" — and remount it read-only).
#[test]
fn the_mount_registry_is_not_writable_by_other_users() {
    require_root();
    let env = TestEnv::new("registry-perms");
    let (l1, l2) = fixture(&env);
    let stack = env.stack(&[&l2, &l1]);
    let (upper, work) = upper_work(&env.fresh_dir("rw"));
    // A mount made by the stratafs daemon (the CLI), which registers it.
    let m = stack.stratafs_rw(&UpperSpec::new(&upper, &work));
    let mut record = None;
    for e in fs::read_dir(MOUNT_REGISTRY)
        .expect("the registry directory")
        .flatten()
    {
        let Ok(v) =
            serde_json::from_slice::<serde_json::Value>(&fs::read(e.path()).unwrap_or_default())
        else {
            continue;
        };
        if v["mountpoint"].as_str() == Some(m.path().to_str().unwrap()) {
            record = Some(e.path());
        }
    }
    let record =
        record.unwrap_or_else(|| panic!("no record of {} in {MOUNT_REGISTRY}", m.path().display()));
    let mut problems = Vec::new();
    for p in [
        Path::new("/run/stratafs"),
        Path::new(MOUNT_REGISTRY),
        record.as_path(),
    ] {
        let mode = fs::metadata(p).unwrap().mode();
        if mode & 0o022 != 0 {
            problems.push(format!("{}: mode {:o}", p.display(), mode & 0o7777));
        }
    }
    // As the unprivileged user: can it create a record, or change ours?
    let planted =
        Path::new(MOUNT_REGISTRY).join(format!("planted-by-test-{}.json", std::process::id()));
    let out = run_timeout(
        as_test_user("sh").args([
            "-c",
            &format!(
                "printf '{{}}' > '{}' && echo created; test -w '{}' && echo ours-writable; exit 0",
                planted.display(),
                record.display()
            ),
        ]),
        T,
    );
    if planted.exists() {
        let _ = fs::remove_file(&planted);
    }
    let said = String::from_utf8_lossy(&out.stdout);
    if said.contains("created") {
        problems.push(format!("{TEST_USER} created {}", planted.display()));
    }
    if said.contains("ours-writable") {
        problems.push(format!("{TEST_USER} may write {}", record.display()));
    }
    m.unmount();
    assert!(
        problems.is_empty(),
        "the mount registry is writable by other users:\n{}",
        problems.join("\n")
    );
    stack.assert_layers_unchanged();
}
