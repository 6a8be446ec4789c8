//! Uses stratafs the way a test suite would: a throwaway writable view of a
//! read-only fixture directory, changed freely, gone when dropped.
//!
//! `cargo run --example fixture_view -- FIXTURE_DIR`

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fixtures: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .ok_or("usage: fixture_view FIXTURE_DIR")?;
    let mnt = stratafs::Mount::builder()
        .lower(&fixtures)
        .ephemeral_upper()
        .mount_temp()?;
    println!(
        "fixtures of {} mounted at {}",
        fixtures.display(),
        mnt.path().display()
    );
    let mut names: Vec<_> = std::fs::read_dir(mnt.path())?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    println!("entries: {names:?}");
    std::fs::write(mnt.path().join("written-by-the-test"), b"scratch\n")?;
    for name in &names {
        let p = mnt.path().join(name);
        if p.is_file() {
            std::fs::remove_file(&p)?;
            println!("removed {} (in the view only)", name.to_string_lossy());
            break;
        }
    }
    let path = mnt.path().to_path_buf();
    drop(mnt);
    println!(
        "unmounted; {} {}",
        path.display(),
        if path.exists() {
            "still exists"
        } else {
            "removed"
        }
    );
    Ok(())
}
