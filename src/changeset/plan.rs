//! From an upper directory and the views with and without it, the changes
//! (as `docker diff` lists them) and the steps that write them as an OCI
//! changeset.

use std::os::fd::{AsFd, BorrowedFd};

use super::touched::{Touch, touched};
use super::view::{Found, find, names};
use crate::store::StoreError;

/// How a path differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum ChangeKind {
    /// Not in the lower layers.
    Added,
    /// In the lower layers, with other content or metadata.
    Changed,
    /// In the lower layers, hidden by the upper.
    Deleted,
}

impl ChangeKind {
    /// `A`, `C` or `D`, as `docker diff` prints them.
    pub fn letter(self) -> char {
        match self {
            ChangeKind::Added => 'A',
            ChangeKind::Changed => 'C',
            ChangeKind::Deleted => 'D',
        }
    }
}

/// One changed path (`/`-rooted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// How.
    pub kind: ChangeKind,
    /// Where, `/`-rooted.
    pub path: Vec<u8>,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}",
            self.kind.letter(),
            String::from_utf8_lossy(&self.path)
        )
    }
}

/// What the changeset holds, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A whiteout.
    Delete(Vec<u8>),
    /// The entry as the merged view shows it (a directory without its content).
    Write(Vec<u8>),
    /// The directory and everything in it as the merged view shows it; with
    /// an opaque marker when something below would otherwise show through.
    WriteTree {
        /// The directory, `/`-rooted.
        path: Vec<u8>,
        /// Whether lower content there must be hidden.
        opaque: bool,
    },
}

/// The three trees a changeset is computed from.
pub struct Views<'a> {
    /// The merged view with the changes.
    pub full: BorrowedFd<'a>,
    /// The merged view of the lower layers alone.
    pub below: BorrowedFd<'a>,
    /// The upper directory itself.
    pub upper: BorrowedFd<'a>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub changes: Vec<Change>,
    pub steps: Vec<Step>,
}

fn under(path: &[u8], prefix: &[u8]) -> bool {
    path.len() > prefix.len() && path.starts_with(prefix) && path[prefix.len()] == b'/'
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = parent.to_vec();
    if p != b"/" {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

impl Plan {
    fn change(&mut self, kind: ChangeKind, path: &[u8]) {
        self.changes.push(Change {
            kind,
            path: path.to_vec(),
        });
    }

    /// Everything in `dir` (of the full view) is new.
    fn all_added(&mut self, dir: &Found, path: &[u8]) -> Result<(), StoreError> {
        let fd = dir.open_dir()?;
        for name in names(fd.as_fd())? {
            let child = join(path, &name);
            self.change(ChangeKind::Added, &child);
            if let Some(f) = find(fd.as_fd(), &join(b"/", &name))?
                && f.is_dir()
            {
                self.all_added(&f, &child)?;
            }
        }
        Ok(())
    }

    /// Compares two directories entry by entry.
    fn compare_dirs(&mut self, full: &Found, below: &Found, path: &[u8]) -> Result<(), StoreError> {
        let (ffd, bfd) = (full.open_dir()?, below.open_dir()?);
        let (fnames, bnames) = (names(ffd.as_fd())?, names(bfd.as_fd())?);
        for name in &bnames {
            if fnames.binary_search(name).is_err() {
                self.change(ChangeKind::Deleted, &join(path, name));
            }
        }
        for name in &fnames {
            let child = join(path, name);
            let rel = join(b"/", name);
            let Some(f) = find(ffd.as_fd(), &rel)? else {
                continue;
            };
            match find(bfd.as_fd(), &rel)? {
                None => {
                    self.change(ChangeKind::Added, &child);
                    if f.is_dir() {
                        self.all_added(&f, &child)?;
                    }
                }
                Some(b) => {
                    if f.record(&child)? != b.record(&child)? {
                        self.change(ChangeKind::Changed, &child);
                    }
                    if f.is_dir() && b.is_dir() {
                        self.compare_dirs(&f, &b, &child)?;
                    } else if f.is_dir() {
                        self.all_added(&f, &child)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Names of multiply-linked inodes of the view, found by walking it.
fn names_of(
    root: BorrowedFd<'_>,
    inos: &std::collections::HashSet<u64>,
) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
    let mut out = Vec::new();
    crate::store::tree_walk::walk(root, &mut |v| {
        if let crate::store::tree_walk::Item::Entry { stat, .. } = v.item
            && stat.st_nlink > 1
            && inos.contains(&stat.st_ino)
            && !matches!(
                rustix::fs::FileType::from_raw_mode(stat.st_mode),
                rustix::fs::FileType::Directory
            )
        {
            out.push((stat.st_ino, v.path.to_vec()));
        }
        Ok(())
    })?;
    Ok(out)
}

/// A changed file with names the upper directory does not hold (a lower
/// file's other hard links, joined to its copy through the workdir index)
/// changed under those names too.
fn complete_links(plan: &mut Plan, v: &Views<'_>, covered: &[Vec<u8>]) -> Result<(), StoreError> {
    let mut short = std::collections::HashSet::new();
    let mut written = std::collections::HashSet::new();
    for step in &plan.steps {
        if let Step::Write(path) = step {
            written.insert(path.clone());
            if let Some(f) = find(v.full, path)?
                && !f.is_dir()
                && f.stat.st_nlink > 1
            {
                short.insert(f.stat.st_ino);
            }
        }
    }
    if short.is_empty() {
        return Ok(());
    }
    for (_, path) in names_of(v.full, &short)? {
        if written.contains(&path) || covered.iter().any(|c| under(&path, c)) {
            continue;
        }
        let kind = match find(v.below, &path)? {
            Some(_) => ChangeKind::Changed,
            None => ChangeKind::Added,
        };
        plan.change(kind, &path);
        plan.steps.push(Step::Write(path));
    }
    Ok(())
}

/// Computes the changes the upper directory makes to the lower layers.
pub fn plan(v: &Views<'_>) -> Result<Plan, StoreError> {
    let mut plan = Plan::default();
    // Subtrees already decided whole (deleted, or written from the view).
    let mut covered: Vec<Vec<u8>> = Vec::new();
    for (path, touch) in touched(v.upper)? {
        if covered.iter().any(|c| under(&path, c)) {
            continue;
        }
        let full = find(v.full, &path)?;
        let below = find(v.below, &path)?;
        match (full, below) {
            (None, None) => {}
            (None, Some(_)) => {
                plan.change(ChangeKind::Deleted, &path);
                plan.steps.push(Step::Delete(path.clone()));
                covered.push(path);
            }
            (Some(f), None) => {
                plan.change(ChangeKind::Added, &path);
                if f.is_dir() && touch == Touch::Whole {
                    plan.all_added(&f, &path)?;
                    plan.steps.push(Step::WriteTree {
                        path: path.clone(),
                        opaque: false,
                    });
                    covered.push(path);
                } else {
                    plan.steps.push(Step::Write(path));
                }
            }
            (Some(f), Some(b)) => {
                let differs = f.record(&path)? != b.record(&path)?;
                if differs {
                    plan.change(ChangeKind::Changed, &path);
                }
                if f.is_dir() && touch == Touch::Whole {
                    if b.is_dir() {
                        plan.compare_dirs(&f, &b, &path)?;
                    } else {
                        plan.all_added(&f, &path)?;
                    }
                    plan.steps.push(Step::WriteTree {
                        path: path.clone(),
                        opaque: b.is_dir(),
                    });
                    covered.push(path);
                } else if differs || f.is_dir() {
                    plan.steps.push(Step::Write(path));
                }
            }
        }
    }
    complete_links(&mut plan, v, &covered)?;
    Ok(plan)
}
