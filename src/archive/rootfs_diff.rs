//! A container's writable-layer changes: `rootfs-diff.tar` holds what was
//! added or changed, `deleted.files` (a JSON list) what was removed.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::{ArchiveError, write_json};

/// Reads an overlayfs upper directory. Whiteouts (0:0 character devices)
/// become entries of `deleted.files`; everything else goes into the tar with
/// its owner, mode and times.
pub fn write(upper: &Path, tar_path: &Path, deleted_path: &Path) -> Result<(), ArchiveError> {
    let file = super::create_private(tar_path)?;
    let mut tar = tar::Builder::new(file);
    tar.follow_symlinks(false);
    let mut deleted = Vec::new();
    for entry in walkdir::WalkDir::new(upper)
        .follow_links(false)
        .sort_by_file_name()
        .min_depth(1)
    {
        let entry = entry.map_err(ArchiveError::walk(upper))?;
        let relative = entry.path().strip_prefix(upper).expect("walkdir stays under its root");
        let meta = entry
            .metadata()
            .map_err(|e| ArchiveError::Invalid(format!("{}: {e}", entry.path().display())))?;
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            deleted.push(relative.to_string_lossy().into_owned());
            continue;
        }
        tar.append_path_with_name(entry.path(), relative)
            .map_err(ArchiveError::io(entry.path()))?;
    }
    tar.into_inner()
        .and_then(|f| f.sync_all())
        .map_err(ArchiveError::io(tar_path))?;
    write_json(deleted_path, &deleted)
}

/// The upper directory of the overlay mounted as `pid`'s root, if it is one.
pub fn upper_dir_of(pid: u32) -> Result<Option<std::path::PathBuf>, ArchiveError> {
    let path = format!("/proc/{pid}/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(ArchiveError::io(&path))?;
    Ok(text.lines().find_map(|line| {
        let (pre, post) = line.split_once(" - ")?;
        let mount_point = pre.split(' ').nth(4)?;
        let mut fields = post.split(' ');
        if mount_point != "/" || fields.next()? != "overlay" {
            return None;
        }
        fields
            .nth(1)?
            .split(',')
            .find_map(|o| o.strip_prefix("upperdir="))
            .map(std::path::PathBuf::from)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whiteouts_become_deleted_files() {
        let upper = tempfile::tempdir().unwrap();
        std::fs::create_dir(upper.path().join("etc")).unwrap();
        std::fs::write(upper.path().join("etc/new"), b"hello").unwrap();
        nix::sys::stat::mknod(
            &upper.path().join("etc/gone"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o600),
            0,
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let (tar_path, deleted) = (out.path().join("rootfs-diff.tar"), out.path().join("deleted.files"));
        write(upper.path(), &tar_path, &deleted).unwrap();

        let listed: Vec<String> = serde_json::from_slice(&std::fs::read(&deleted).unwrap()).unwrap();
        assert_eq!(listed, vec!["etc/gone".to_string()]);
        let mut archive = tar::Archive::new(std::fs::File::open(&tar_path).unwrap());
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, vec!["etc", "etc/new"]);
    }
}
