//! Seals: podckptd's own record that a checkpoint's files were hashed and
//! matched its manifest, with each file's identity at that moment (device,
//! inode, size, mtime and ctime). A restore of a checkpoint whose files all
//! still have that identity need not read every byte again; this is what
//! lets one checkpoint warm-start many replicas quickly.
//!
//! Why an unchanged identity means unchanged content:
//! - no system call sets ctime; any write or metadata change moves it to now;
//! - a copied or re-extracted checkpoint has new inodes and no seal;
//! - only local file systems are trusted, where the kernel's ctime is the
//!   truth (NFS and FUSE may serve cached or foreign attributes);
//! - seals live in podckptd's state directory, under /run by default, so
//!   they end with the boot and are private to root.
//!
//! Timestamps come from a clock that ticks every few milliseconds, so a file
//! written again within the same tick as before keeps its ctime. A file
//! whose ctime is within `RACY` of the sealing is therefore hashed again
//! at restore (git calls such index entries "racily clean").
//!
//! Anything else gets the full verification, which then seals the
//! checkpoint for the next restore.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::statfs;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::debug;

use super::{ArchiveError, digest};

/// Far more than a timestamp tick (1 to 10 ms).
const RACY_NS: i128 = 100_000_000;

/// What a file was when it was hashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Self {
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Seal {
    root: PathBuf,
    /// The SHA-256 of the manifest's bytes the files matched.
    manifest_sha256: String,
    /// When the sealed identities were read, in ns since the epoch.
    sealed_at_ns: i128,
    /// Every file under the root, the manifest included.
    files: BTreeMap<String, Identity>,
}

/// The identities of a checkpoint's files at one moment.
#[derive(Debug)]
pub struct Snapshot {
    root: PathBuf,
    taken_at_ns: i128,
    files: BTreeMap<String, Identity>,
}

#[derive(Clone, Debug)]
pub struct Seals {
    dir: PathBuf,
}

impl Seals {
    pub fn open(state_dir: &Path) -> Result<Self, ArchiveError> {
        let dir = state_dir.join("seals");
        super::create_private_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// What the files under `root` are now, to seal once they are verified;
    /// `None` for a file system whose attributes are not trusted.
    pub fn snapshot(&self, root: &Path) -> Result<Option<Snapshot>, ArchiveError> {
        if !is_local(root) {
            debug!(root = %root.display(), "not sealable: not a local file system");
            return Ok(None);
        }
        let taken_at_ns = now_ns();
        Ok(Some(Snapshot {
            root: root.to_owned(),
            taken_at_ns,
            files: identities(root)?,
        }))
    }

    /// Records that the files of `snapshot` match `manifest` (its bytes),
    /// if they are still as they were when it was taken: a file changed
    /// while it was being hashed is not sealed.
    pub fn seal(&self, snapshot: Snapshot, manifest: &[u8]) -> Result<(), ArchiveError> {
        if identities(&snapshot.root)? != snapshot.files {
            return Err(ArchiveError::Invalid(format!(
                "{} changed while it was being verified",
                snapshot.root.display()
            )));
        }
        let seal = Seal {
            root: snapshot.root,
            manifest_sha256: sha256_hex(manifest),
            sealed_at_ns: snapshot.taken_at_ns,
            files: snapshot.files,
        };
        // A torn seal must never pass for a whole one.
        super::durable::replace_json(&self.path_for(&seal.root), &seal)
    }

    /// Whether the files of `snapshot` are exactly those sealed with this
    /// manifest, each as it was then. `None`: not sealed, or changed; verify
    /// it all. `Some(files)`: unchanged, but these were written too close to
    /// the sealing for their ctime to prove it, and must be hashed again.
    pub fn unchanged(&self, snapshot: &Snapshot, manifest: &[u8]) -> Option<Vec<String>> {
        let bytes = std::fs::read(self.path_for(&snapshot.root)).ok()?;
        let seal = serde_json::from_slice::<Seal>(&bytes).ok()?;
        if seal.root != snapshot.root || seal.manifest_sha256 != sha256_hex(manifest) || seal.files != snapshot.files {
            return None;
        }
        Some(
            seal.files
                .into_iter()
                .filter(|(_, id)| id.ctime_ns + RACY_NS > seal.sealed_at_ns)
                .map(|(name, _)| name)
                .collect(),
        )
    }

    /// Removes the seals of checkpoints that are gone (no manifest at the
    /// sealed path any more), unreadable seals, and the temporary files of
    /// a daemon killed while sealing; returns how many went. A seal is only
    /// ever a shortcut, so removing one too many costs a full verification.
    pub fn prune(&self) -> Result<usize, ArchiveError> {
        let mut removed = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(ArchiveError::io(&self.dir))? {
            let path = entry.map_err(ArchiveError::io(&self.dir))?.path();
            let stale = match path.extension().and_then(|e| e.to_str()) {
                Some("json") => std::fs::read(&path)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<Seal>(&bytes).ok())
                    .is_none_or(|seal| !super::is_committed(&seal.root)),
                // A seal being written right now is left to its writer.
                Some(ext) if ext.starts_with("tmp-") => {
                    ext.strip_prefix("tmp-").and_then(|pid| pid.parse().ok()) != Some(std::process::id())
                }
                _ => false,
            };
            if stale {
                match std::fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(ArchiveError::io(&path)(e)),
                }
            }
        }
        Ok(removed)
    }

    fn path_for(&self, root: &Path) -> PathBuf {
        self.dir
            .join(sha256_hex(root.as_os_str().as_encoded_bytes()))
            .with_extension("json")
    }
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

fn identities(root: &Path) -> Result<BTreeMap<String, Identity>, ArchiveError> {
    digest::list(root)?
        .into_iter()
        .map(|file| {
            let meta = std::fs::symlink_metadata(&file.path).map_err(ArchiveError::io(&file.path))?;
            Ok((file.name, Identity::of(&meta)))
        })
        .collect()
}

/// File systems where ctime comes from this kernel, not a cache or a server.
fn is_local(root: &Path) -> bool {
    let Ok(fs) = statfs::statfs(root) else { return false };
    [
        statfs::EXT4_SUPER_MAGIC,
        statfs::XFS_SUPER_MAGIC,
        statfs::BTRFS_SUPER_MAGIC,
        statfs::TMPFS_MAGIC,
        statfs::F2FS_SUPER_MAGIC,
        statfs::OVERLAYFS_SUPER_MAGIC,
    ]
    .contains(&fs.filesystem_type())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ckpt");
        std::fs::create_dir_all(root.join("c")).unwrap();
        std::fs::write(root.join("c/pages.img"), b"memory").unwrap();
        std::fs::write(root.join("manifest.json"), b"{}").unwrap();
        (dir, root)
    }

    fn seal(seals: &Seals, root: &Path) {
        let snapshot = seals.snapshot(root).unwrap().expect("a local file system");
        seals.seal(snapshot, b"{}").unwrap();
    }

    fn unchanged(seals: &Seals, root: &Path, manifest: &[u8]) -> Option<Vec<String>> {
        let snapshot = seals.snapshot(root).unwrap().expect("a local file system");
        seals.unchanged(&snapshot, manifest)
    }

    #[test]
    fn a_sealed_checkpoint_holds_until_a_file_changes_even_with_its_times_put_back() {
        let (_dir, root) = checkpoint();
        if !is_local(&root) {
            eprintln!("SKIPPED: the temporary directory is not on a local file system");
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let seals = Seals::open(state.path()).unwrap();
        assert_eq!(unchanged(&seals, &root, b"{}"), None, "nothing sealed yet");
        seal(&seals, &root);
        // Just written: every file is racy, so every one is named for hashing.
        assert_eq!(
            unchanged(&seals, &root, b"{}"),
            Some(vec!["c/pages.img".to_string(), "manifest.json".to_string()])
        );
        assert_eq!(unchanged(&seals, &root, b"{ }"), None, "another manifest");
        std::thread::sleep(std::time::Duration::from_nanos(RACY_NS as u64));
        seal(&seals, &root);
        assert_eq!(unchanged(&seals, &root, b"{}"), Some(vec![]), "old enough to trust");

        // Same size, same mtime: only ctime tells.
        let image = root.join("c/pages.img");
        let mtime = std::fs::metadata(&image).unwrap().modified().unwrap();
        std::fs::write(&image, b"MEMORY").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&image)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(unchanged(&seals, &root, b"{}"), None, "a rewritten file still held");

        seal(&seals, &root);
        assert!(unchanged(&seals, &root, b"{}").is_some());
        std::fs::write(root.join("c/extra"), b"").unwrap();
        assert_eq!(unchanged(&seals, &root, b"{}"), None, "an added file still held");
    }

    #[test]
    fn a_file_changed_while_it_was_verified_is_not_sealed() {
        let (_dir, root) = checkpoint();
        let state = tempfile::tempdir().unwrap();
        let seals = Seals::open(state.path()).unwrap();
        let Some(snapshot) = seals.snapshot(&root).unwrap() else {
            return;
        };
        std::fs::write(root.join("c/pages.img"), b"MEMORY").unwrap();
        assert!(seals.seal(snapshot, b"{}").is_err());
        assert_eq!(unchanged(&seals, &root, b"{}"), None);
    }

    #[test]
    fn seals_of_checkpoints_that_are_gone_are_pruned() {
        let state = tempfile::tempdir().unwrap();
        let seals = Seals::open(state.path()).unwrap();
        let (_kept_dir, kept) = checkpoint();
        seal(&seals, &kept);
        let (gone_dir, gone) = checkpoint();
        seal(&seals, &gone);
        std::fs::write(seals.dir.join("garbage.json"), b"not a seal").unwrap();
        drop(gone_dir);

        assert_eq!(seals.prune().unwrap(), 2, "the gone checkpoint's seal and the garbage");
        assert!(seals.path_for(&kept).exists(), "a live checkpoint keeps its seal");
        assert_eq!(seals.prune().unwrap(), 0);
    }

    #[test]
    fn a_checkpoint_at_another_path_is_not_sealed() {
        let (dir, root) = checkpoint();
        if !is_local(&root) {
            return;
        }
        let state = tempfile::tempdir().unwrap();
        let seals = Seals::open(state.path()).unwrap();
        seal(&seals, &root);
        let copy = dir.path().join("copy");
        std::fs::rename(&root, &copy).unwrap();
        assert_eq!(unchanged(&seals, &copy, b"{}"), None);
    }
}
