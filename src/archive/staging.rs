//! Builds a checkpoint in a private sibling of its destination and renames
//! it into place only when complete; dropped unfinished, it leaves nothing.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::warn;

use super::{ArchiveError, DIR_MODE, FILE_MODE};

const STAGING_MARK: &str = ".podckpt-";

/// Whether `path` is named as `Staging` names its directories: recovery
/// removes nothing else, whatever its journal says.
pub fn is_staging_dir(path: &Path) -> bool {
    path.is_absolute()
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.') && n.contains(STAGING_MARK))
}

pub struct Staging {
    dir: PathBuf,
    destination: PathBuf,
    committed: bool,
}

impl Staging {
    /// Creates `.NAME.podckpt-PID-N` next to `destination`, mode 0700. Being
    /// on the same file system, the final rename is atomic.
    pub fn create(destination: &Path) -> Result<Self, ArchiveError> {
        let parent = destination
            .parent()
            .ok_or_else(|| ArchiveError::Invalid(format!("{} has no parent directory", destination.display())))?;
        let name = destination.file_name().and_then(|n| n.to_str()).unwrap_or("checkpoint");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let dir = parent.join(format!(".{name}{STAGING_MARK}{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(DIR_MODE)
            .create(&dir)
            .map_err(ArchiveError::io(&dir))?;
        Ok(Self {
            dir,
            destination: destination.to_owned(),
            committed: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Makes every directory 0700 and every file 0600 (CRIU and runc choose
    /// their own modes), then replaces the empty destination directory.
    pub fn commit(mut self) -> Result<PathBuf, ArchiveError> {
        restrict_modes(&self.dir)?;
        std::fs::rename(&self.dir, &self.destination).map_err(ArchiveError::io(&self.destination))?;
        self.committed = true;
        Ok(self.destination.clone())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            warn!(path = %self.dir.display(), %error, "could not remove unfinished checkpoint");
        }
    }
}

/// Makes every directory under `root` 0700 and every file 0600. A mode
/// already right is left alone: chmod moves ctime, and a seal taken right
/// after would then see every file as just written.
pub fn restrict_modes(root: &Path) -> Result<(), ArchiveError> {
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
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
    use super::*;

    #[test]
    fn only_staging_names_count_as_staging() {
        let parent = tempfile::tempdir().unwrap();
        let staging = Staging::create(&parent.path().join("out")).unwrap();
        assert!(is_staging_dir(staging.path()));
        assert!(!is_staging_dir(Path::new("/var/lib/kubelet")));
        assert!(!is_staging_dir(Path::new(".out.podckpt-1-2")), "relative");
    }

    #[test]
    fn appears_only_on_commit_and_vanishes_if_dropped() {
        let parent = tempfile::tempdir().unwrap();
        let dest = parent.path().join("out");
        std::fs::create_dir(&dest).unwrap();

        let staging = Staging::create(&dest).unwrap();
        std::fs::write(staging.path().join("f"), b"x").unwrap();
        drop(staging);
        assert_eq!(
            std::fs::read_dir(parent.path()).unwrap().count(),
            1,
            "only the destination remains"
        );
        assert_eq!(std::fs::read_dir(&dest).unwrap().count(), 0);

        let staging = Staging::create(&dest).unwrap();
        std::fs::create_dir(staging.path().join("d")).unwrap();
        std::fs::write(staging.path().join("d/f"), b"x").unwrap();
        staging.commit().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dest), 0o700);
        assert_eq!(mode(&dest.join("d")), 0o700);
        assert_eq!(mode(&dest.join("d/f")), 0o600);
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 1);
    }
}
