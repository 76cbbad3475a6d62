//! Builds a checkpoint inside the caller's own directory.
//!
//! The CRI contract gives CheckpointPod an existing, empty directory that the
//! caller owns: the runtime "must not remove the directory", "must not write
//! outside" it, and "must remove partial artifacts before returning an
//! error". So nothing is staged beside it and nothing replaces it: its inode,
//! owner and mode stay the caller's. What makes a checkpoint whole is its
//! manifest, written last and renamed into place; a restore refuses a
//! directory without one, and an unfinished build is emptied again.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tracing::warn;

use super::{ArchiveError, DIR_MODE, FILE_MODE, MANIFEST, durable};

/// The manifest is written here first, inside the checkpoint, and renamed
/// only once complete, so `MANIFEST` is never seen half-written.
pub(super) const MANIFEST_PARTIAL: &str = ".manifest.json.partial";

pub struct Building {
    dir: PathBuf,
    committed: bool,
}

impl Building {
    /// Starts a checkpoint in `dir`, which the caller made and checked empty.
    pub fn begin(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            committed: false,
        }
    }

    /// Makes every directory below the root 0700 and every file 0600 (CRIU
    /// and runc choose their own modes), then writes the manifest, the mark
    /// of a whole checkpoint. The root keeps the caller's mode.
    ///
    /// `durable`: the container folders are already synced (see
    /// `durable::sync_tree`); this syncs the files at the top, then the
    /// manifest before its rename, then the directory that names it all. A
    /// power cut at any point leaves no manifest or one whose files are
    /// there: never a whole-looking checkpoint with its data lost.
    pub fn commit(mut self, manifest: &[u8], durable: bool) -> Result<PathBuf, ArchiveError> {
        restrict_modes(&self.dir)?;
        if durable {
            for entry in std::fs::read_dir(&self.dir).map_err(ArchiveError::io(&self.dir))? {
                let entry = entry.map_err(ArchiveError::io(&self.dir))?;
                if entry.file_type().map_err(ArchiveError::io(entry.path()))?.is_file() {
                    durable::sync_file(&entry.path())?;
                }
            }
        }
        let partial = self.dir.join(MANIFEST_PARTIAL);
        let mut file = super::create_private(&partial)?;
        file.write_all(manifest).map_err(ArchiveError::io(&partial))?;
        if durable {
            file.sync_data().map_err(ArchiveError::io(&partial))?;
        }
        let manifest_path = self.dir.join(MANIFEST);
        std::fs::rename(&partial, &manifest_path).map_err(ArchiveError::io(&manifest_path))?;
        if durable {
            durable::sync_dir(&self.dir)?;
        }
        self.committed = true;
        Ok(self.dir.clone())
    }
}

impl Drop for Building {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Err(error) = empty(&self.dir) {
            warn!(path = %self.dir.display(), %error, "could not remove an unfinished checkpoint");
        }
    }
}

/// Whether `dir` holds a whole checkpoint: one whose manifest was committed.
pub fn is_committed(dir: &Path) -> bool {
    std::fs::symlink_metadata(dir.join(MANIFEST)).is_ok_and(|m| m.is_file())
}

/// Removes everything inside `dir` and keeps `dir` itself, as the caller
/// gave it. Links are removed, never followed.
pub fn empty(dir: &Path) -> Result<(), ArchiveError> {
    for entry in std::fs::read_dir(dir).map_err(ArchiveError::io(dir))? {
        let entry = entry.map_err(ArchiveError::io(dir))?;
        let path = entry.path();
        let removed = match entry.file_type().map_err(ArchiveError::io(&path))? {
            t if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(ArchiveError::io(&path)(e)),
            _ => {}
        }
    }
    Ok(())
}

/// Makes every directory under `root`, but `root` itself, 0700 and every
/// file 0600. A mode already right is left alone: chmod moves ctime, and a
/// seal taken right after would then see every file as just written.
pub fn restrict_modes(root: &Path) -> Result<(), ArchiveError> {
    for entry in walkdir::WalkDir::new(root).min_depth(1).follow_links(false) {
        let entry = entry.map_err(ArchiveError::walk(root))?;
        let mode = match entry.file_type() {
            t if t.is_dir() => DIR_MODE,
            t if t.is_file() => FILE_MODE,
            _ => {
                return Err(ArchiveError::Invalid(format!(
                    "{} is neither a file nor a directory",
                    entry.path().display()
                )));
            }
        };
        let current = entry.metadata().map_err(ArchiveError::walk(root))?.permissions().mode() & 0o7777;
        if current != mode {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(mode))
                .map_err(ArchiveError::io(entry.path()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn caller_dir(parent: &Path) -> PathBuf {
        let dest = parent.join("out");
        std::fs::create_dir(&dest).unwrap();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o750)).unwrap();
        dest
    }

    #[test]
    fn dropped_unfinished_it_empties_the_directory_and_keeps_it() {
        let parent = tempfile::tempdir().unwrap();
        let dest = caller_dir(parent.path());
        let inode = std::fs::metadata(&dest).unwrap().ino();

        let building = Building::begin(&dest);
        std::fs::create_dir(dest.join("d")).unwrap();
        std::fs::write(dest.join("d/pages-1.img"), b"memory").unwrap();
        std::os::unix::fs::symlink(parent.path(), dest.join("link")).unwrap();
        drop(building);

        let meta = std::fs::metadata(&dest).unwrap();
        assert_eq!(meta.ino(), inode, "the caller's directory itself");
        assert_eq!(meta.permissions().mode() & 0o777, 0o750, "with the caller's mode");
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0, "and empty");
        assert!(parent.path().exists(), "a link inside is removed, not followed");
        assert_eq!(
            std::fs::read_dir(parent.path()).unwrap().count(),
            1,
            "nothing beside it"
        );
    }

    #[test]
    fn commit_makes_the_contents_private_and_writes_the_manifest_last() {
        let parent = tempfile::tempdir().unwrap();
        let dest = caller_dir(parent.path());
        let inode = std::fs::metadata(&dest).unwrap().ino();

        let building = Building::begin(&dest);
        std::fs::create_dir(dest.join("d")).unwrap();
        std::fs::write(dest.join("d/f"), b"x").unwrap();
        assert!(!is_committed(&dest));
        building.commit(b"{}", true).unwrap();

        assert!(is_committed(&dest));
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dest), 0o750, "the root keeps the caller's mode");
        assert_eq!(std::fs::metadata(&dest).unwrap().ino(), inode);
        assert_eq!(mode(&dest.join("d")), 0o700);
        assert_eq!(mode(&dest.join("d/f")), 0o600);
        assert_eq!(mode(&dest.join(MANIFEST)), 0o600);
        assert!(!dest.join(MANIFEST_PARTIAL).exists());
        assert_eq!(
            std::fs::read_dir(parent.path()).unwrap().count(),
            1,
            "nothing beside it"
        );
    }
}
