//! 500 lower layers.

mod common;

use common::*;
use std::fs;

#[test]
fn five_hundred_layers() {
    require_root();
    let env = TestEnv::new("500-layers");
    let n = 500;
    // Layer 0 is the top.
    let layers: Vec<Layer> = (0..n).map(|i| env.layer(&format!("{i:03}"))).collect();
    for (i, l) in layers.iter().enumerate() {
        l.file("shared", format!("layer {i}"));
        l.file(format!("only-{i:03}"), format!("only {i}"));
        l.file(format!("dir/f{i:03}"), format!("{i}"));
        if i % 2 == 0 {
            l.file("dir/even-dup", format!("{i}"));
        }
    }
    layers[n - 1].file("bottom-only/deep/file", "from the bottom layer");
    layers[n - 1].file("victim", "hidden by the top layer");
    layers[0].whiteout("victim", Whiteout::CharDev);
    layers[250].whiteout("dir/f400", Whiteout::Oci);
    let refs: Vec<&Layer> = layers.iter().collect();
    let stack = env.stack(&refs);
    let m = stack.stratafs();
    assert_eq!(
        fs::read_to_string(m.join("shared")).unwrap(),
        "layer 0",
        "top layer wins"
    );
    assert_eq!(
        fs::read_to_string(m.join("bottom-only/deep/file")).unwrap(),
        "from the bottom layer"
    );
    assert_eq!(fs::read_to_string(m.join("only-499")).unwrap(), "only 499");
    assert_eq!(fs::read_to_string(m.join("only-250")).unwrap(), "only 250");
    assert_eq!(fs::read_to_string(m.join("dir/even-dup")).unwrap(), "0");
    assert!(
        fs::symlink_metadata(m.join("victim")).is_err(),
        "victim must be hidden"
    );
    assert!(
        fs::symlink_metadata(m.join("dir/f400")).is_err(),
        "dir/f400 must be hidden by layer 250"
    );
    assert_eq!(fs::read_to_string(m.join("dir/f100")).unwrap(), "100");
    let root: Vec<String> = read_dir_raw(m.path())
        .unwrap()
        .into_iter()
        .map(|e| show_path(&e.name))
        .collect();
    assert_eq!(
        root.len(),
        2 + 3 + n,
        "root listing: . .. shared dir bottom-only + {n} only-*"
    );
    let dir = read_dir_raw(&m.join("dir")).unwrap();
    assert_eq!(
        dir.len(),
        2 + n - 1 + 1,
        "dir listing: {n} f* minus f400, plus even-dup"
    );
    let s = Snapshot::take(m.path());
    let inv = mount_invariants(&s);
    assert!(inv.is_empty(), "{}", format_problems("invariants", &inv));
}
