//! Where an import writes: a directory that nobody but this user can
//! change while root writes into it (see `archive::owned_path`: the
//! stream's names are the sender's), emptied again (or removed, if the
//! import made it) unless the import commits.

use std::path::{Path, PathBuf};

use tracing::warn;

use super::StreamError;
use crate::archive::owned_path::{self, Sticky};
use crate::archive::{Building, create_private_dir, durable};

pub(super) struct Destination {
    /// The directory, by its canonical path: the one podckptd's seals and
    /// `podckpt restorep` look it up by.
    pub dir: PathBuf,
    building: Option<Building>,
    created: bool,
}

impl Destination {
    /// An empty directory at `dir`, made (0700) if there is none.
    pub fn prepare(dir: &Path) -> Result<Self, StreamError> {
        let (dir, created) = match std::fs::symlink_metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let name = dir
                    .file_name()
                    .ok_or_else(|| StreamError::Destination(format!("{} names no directory to make", dir.display())))?;
                let parent = canonical(durable::parent_dir(dir))?;
                // Others may make names beside ours in a sticky parent, but
                // never rename or remove ours.
                check_path(&parent, Sticky::Allowed)?;
                let dir = parent.join(name);
                create_private_dir(&dir)?;
                (dir, true)
            }
            Err(e) => return Err(StreamError::io(dir.display().to_string())(e)),
            Ok(meta) if !meta.is_dir() => {
                return Err(StreamError::Destination(format!(
                    "{} is not a directory",
                    dir.display()
                )));
            }
            Ok(_) => {
                let dir = canonical(dir)?;
                // Not even sticky: another user could plant a link at a
                // name the import is about to make.
                check_path(&dir, Sticky::Refused)?;
                let mut entries = std::fs::read_dir(&dir).map_err(StreamError::io(dir.display().to_string()))?;
                if entries.next().is_some() {
                    return Err(StreamError::Destination(format!(
                        "{} is not empty: a checkpoint is imported into an empty directory",
                        dir.display()
                    )));
                }
                (dir, false)
            }
        };
        Ok(Self {
            building: Some(Building::begin(&dir)),
            dir,
            created,
        })
    }

    /// Syncs what was written, and the directory's own name if the import
    /// made it, then commits `manifest` last.
    pub fn commit(mut self, manifest: &[u8]) -> Result<PathBuf, StreamError> {
        durable::sync_tree(&self.dir)?;
        if self.created {
            durable::sync_dir(self.dir.parent().expect("a canonical path below /"))?;
        }
        let building = self.building.take().expect("building until committed");
        building.commit(manifest, true)?;
        Ok(std::mem::take(&mut self.dir))
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        let Some(building) = self.building.take() else {
            return;
        };
        // Building's own drop empties the directory.
        drop(building);
        if self.created
            && let Err(error) = std::fs::remove_dir(&self.dir)
        {
            warn!(path = %self.dir.display(), %error, "could not remove an unfinished import");
        }
    }
}

fn canonical(path: &Path) -> Result<PathBuf, StreamError> {
    std::fs::canonicalize(path).map_err(StreamError::io(path.display().to_string()))
}

/// Refuses `dir` (canonical) if anyone but root and this user could change
/// it or any directory above it.
fn check_path(dir: &Path, sticky_dir: Sticky) -> Result<(), StreamError> {
    match owned_path::changeable_by_others(dir, sticky_dir).map_err(StreamError::io(dir.display().to_string()))? {
        None => Ok(()),
        Some(why) => Err(StreamError::Destination(format!(
            "{why}; import into a directory that only root can change"
        ))),
    }
}
