//! Putting a checkpoint on stable storage.
//!
//! CRIU writes its images through the page cache and syncs nothing, so a
//! checkpoint the call reported as saved could vanish with the next power
//! cut, which is the very failure periodic checkpoints exist to survive.
//! Files are synced first and then the directories that name them, deepest
//! first, so that no name is durable before what it names.

use std::fs::File;
use std::path::{Path, PathBuf};

use super::ArchiveError;

/// Syncs every file under `root`, then every directory, `root` included.
pub fn sync_tree(root: &Path) -> Result<(), ArchiveError> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.map_err(ArchiveError::walk(root))?;
        if entry.file_type().is_dir() {
            dirs.push(entry.into_path());
        } else if entry.file_type().is_file() {
            sync_file(entry.path())?;
        }
    }
    for dir in dirs.iter().rev() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// A file's data and size (fdatasync): enough to read it back whole.
pub fn sync_file(path: &Path) -> Result<(), ArchiveError> {
    File::open(path)
        .and_then(|f| f.sync_data())
        .map_err(ArchiveError::io(path))
}

/// A directory's entries: the names in it survive.
pub fn sync_dir(path: &Path) -> Result<(), ArchiveError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(ArchiveError::io(path))
}

/// Replaces `path` with `value` as JSON so that a crash or a power cut
/// leaves either the old file or the new one, whole, never a torn one: a
/// new file beside it, synced, renamed over it, and the rename synced.
pub fn replace_json(path: &Path, value: &impl serde::Serialize) -> Result<(), ArchiveError> {
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    super::write_json(&temporary, value)?;
    sync_file(&temporary)?;
    std::fs::rename(&temporary, path).map_err(ArchiveError::io(path))?;
    sync_dir(parent_dir(path))
}

/// The directory whose entry names `path`: the one to sync for that name
/// to survive. A bare name's parent is `""` to std, which no call opens.
pub fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_is_in_the_current_directory() {
        assert_eq!(parent_dir(Path::new("key")), Path::new("."));
        assert_eq!(parent_dir(Path::new("/etc/podckpt/key")), Path::new("/etc/podckpt"));
    }

    #[test]
    fn syncs_a_tree_and_reports_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/pages-1.img"), vec![7u8; 1 << 20]).unwrap();
        std::fs::write(dir.path().join("a/f"), b"x").unwrap();
        sync_tree(dir.path()).unwrap();
        let gone = dir.path().join("gone");
        assert!(sync_tree(&gone).unwrap_err().to_string().contains("gone"));
    }
}
