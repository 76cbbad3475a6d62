//! Puts a checkpoint's writable-layer changes back on a new container's
//! root file system, never writing outside it.

use std::path::{Component, Path, PathBuf};

use super::InterposerError;

/// A relative path with no `..`, root or prefix component.
fn confined(path: &Path) -> Option<PathBuf> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!clean.as_os_str().is_empty()).then_some(clean)
}

/// Unpacks `rootfs-diff.tar` into `rootfs` (owners and modes kept; device
/// nodes refused; `unpack_in` refuses anything that would land outside),
/// then removes what `deleted.files` lists.
pub fn apply(rootfs: &Path, diff_tar: &Path, deleted_files: &Path) -> Result<(), InterposerError> {
    let bad = |why: String| InterposerError::BadCheckpoint(why);
    let file = std::fs::File::open(diff_tar).map_err(|e| bad(format!("{}: {e}", diff_tar.display())))?;
    let mut archive = tar::Archive::new(file);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_overwrite(true);
    for entry in archive
        .entries()
        .map_err(|e| bad(format!("{}: {e}", diff_tar.display())))?
    {
        let mut entry = entry.map_err(|e| bad(format!("{}: {e}", diff_tar.display())))?;
        let path = entry.path().map_err(|e| bad(e.to_string()))?.into_owned();
        if confined(&path).is_none() {
            return Err(bad(format!(
                "rootfs diff entry {} escapes the root file system",
                path.display()
            )));
        }
        let kind = entry.header().entry_type();
        if kind.is_block_special() || kind.is_character_special() {
            return Err(bad(format!("rootfs diff entry {} is a device node", path.display())));
        }
        let unpacked = entry.unpack_in(rootfs).map_err(|e| {
            bad(format!(
                "unpacking {}: {e} ({:?})",
                path.display(),
                std::error::Error::source(&e)
            ))
        })?;
        if !unpacked {
            return Err(bad(format!(
                "rootfs diff entry {} escapes the root file system",
                path.display()
            )));
        }
    }
    let listed: Vec<String> = serde_json::from_slice(
        &std::fs::read(deleted_files).map_err(|e| bad(format!("{}: {e}", deleted_files.display())))?,
    )
    .map_err(|e| bad(format!("{}: {e}", deleted_files.display())))?;
    for name in listed {
        let relative = confined(Path::new(&name))
            .ok_or_else(|| bad(format!("deleted file {name} escapes the root file system")))?;
        remove_within(rootfs, &relative)?;
    }
    Ok(())
}

/// Removes `rootfs/relative` unless a symbolic link on the way leads out.
fn remove_within(rootfs: &Path, relative: &Path) -> Result<(), InterposerError> {
    let target = rootfs.join(relative);
    let parent = target.parent().unwrap_or(rootfs);
    let root = rootfs
        .canonicalize()
        .map_err(|e| InterposerError::Io(format!("{}: {e}", rootfs.display())))?;
    match parent.canonicalize() {
        Ok(real) if real.starts_with(&root) => {}
        Ok(_) => {
            return Err(InterposerError::BadCheckpoint(format!(
                "deleted file {} lies behind a link out of the root",
                relative.display()
            )));
        }
        Err(_) => return Ok(()), // the parent is gone already
    }
    let result = match std::fs::symlink_metadata(&target) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&target),
        Ok(_) => std::fs::remove_file(&target),
        Err(_) => Ok(()),
    };
    result.map_err(|e| InterposerError::Io(format!("removing {}: {e}", target.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diff(entries: &[(&str, &[u8])], deleted: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = tar::Builder::new(std::fs::File::create(dir.path().join("d.tar")).unwrap());
        // Like a real diff, parents come before what they hold.
        let mut tmp = tar::Header::new_gnu();
        tmp.set_entry_type(tar::EntryType::Directory);
        tmp.set_mode(0o1777);
        tmp.set_size(0);
        tmp.set_uid(0);
        tmp.set_gid(0);
        tmp.set_mtime(0);
        tmp.set_cksum();
        builder.append_data(&mut tmp, "tmp", std::io::empty()).unwrap();
        for (name, data) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            header.set_cksum();
            builder.append_data(&mut header, name, *data).unwrap();
        }
        builder.into_inner().unwrap();
        std::fs::write(dir.path().join("deleted.json"), serde_json::to_vec(deleted).unwrap()).unwrap();
        dir
    }

    #[test]
    fn adds_changes_and_removes_deleted_files() {
        let rootfs = tempfile::tempdir().unwrap();
        std::fs::create_dir(rootfs.path().join("bin")).unwrap();
        std::fs::write(rootfs.path().join("bin/yes"), b"old").unwrap();
        let d = diff(&[("tmp/written", b"hi\n")], &["bin/yes"]);
        apply(rootfs.path(), &d.path().join("d.tar"), &d.path().join("deleted.json")).unwrap();
        assert_eq!(std::fs::read(rootfs.path().join("tmp/written")).unwrap(), b"hi\n");
        assert!(!rootfs.path().join("bin/yes").exists());
    }

    #[test]
    fn escapes_are_refused() {
        let rootfs = tempfile::tempdir().unwrap();
        let d = diff(&[], &["../outside"]);
        assert!(apply(rootfs.path(), &d.path().join("d.tar"), &d.path().join("deleted.json")).is_err());
        assert!(confined(Path::new("/etc/passwd")).is_none());
        assert!(confined(Path::new("a/../../b")).is_none());
        assert_eq!(confined(Path::new("./a/b")), Some(PathBuf::from("a/b")));
    }
}
