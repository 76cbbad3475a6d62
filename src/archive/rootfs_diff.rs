//! A container's writable-layer changes: `rootfs-diff.tar` holds what was
//! added or changed, `deleted.files` (a JSON list) what was removed.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use super::{ArchiveError, write_json};

/// The tar entry of the root directory itself.
const ROOT_ENTRY: &str = ".";

/// Reads an overlayfs upper directory. Whiteouts (0:0 character devices)
/// become entries of `deleted.files`; everything else goes into the tar with
/// its owner, mode and times, the root directory first: its mode is the
/// container's `/`, which runtimes set differently (containerd 0755, CRI-O
/// the image's), and CRIU refuses a root whose mode changed.
pub fn write(upper: &Path, tar_path: &Path, deleted_path: &Path) -> Result<(), ArchiveError> {
    let file = super::create_private(tar_path)?;
    let mut tar = tar::Builder::new(file);
    tar.follow_symlinks(false);
    tar.append_path_with_name(upper, ROOT_ENTRY)
        .map_err(ArchiveError::io(upper))?;
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
        let kind = meta.file_type();
        if kind.is_char_device() && meta.rdev() == 0 {
            deleted.push(relative.to_string_lossy().into_owned());
            continue;
        }
        if kind.is_socket() {
            // A socket file is only a name: CRIU binds a listening socket
            // at its path again on restore, and the tar format has no
            // entry for one.
            continue;
        }
        if kind.is_fifo() {
            // tar 0.4's append_path_with_name names a FIFO by its source
            // path, not the name given, and refuses it as absolute; the
            // header is built here instead. A process that holds the FIFO
            // open needs it back at its path.
            let mut header = tar::Header::new_gnu();
            header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            header.set_entry_type(tar::EntryType::Fifo);
            header.set_size(0);
            tar.append_data(&mut header, relative, std::io::empty())
                .map_err(ArchiveError::io(entry.path()))?;
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

// Restore: the inverse of `write`.

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
pub fn apply(rootfs: &Path, diff_tar: &Path, deleted_files: &Path) -> Result<(), ArchiveError> {
    let bad = ArchiveError::Invalid;
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
        let kind = entry.header().entry_type();
        if path.components().all(|c| c == Component::CurDir) && kind.is_dir() {
            // The root itself: only its mode; it exists, and its owner is the
            // runtime's to choose.
            let mode = entry
                .header()
                .mode()
                .map_err(|e| bad(format!("{}: {e}", diff_tar.display())))?;
            std::fs::set_permissions(rootfs, std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777))
                .map_err(ArchiveError::io(rootfs))?;
            continue;
        }
        if confined(&path).is_none() {
            return Err(bad(format!(
                "rootfs diff entry {} escapes the root file system",
                path.display()
            )));
        }
        if kind.is_block_special() || kind.is_character_special() {
            return Err(bad(format!("rootfs diff entry {} is a device node", path.display())));
        }
        if kind.is_fifo() {
            // tar 0.4 would unpack it as an empty regular file.
            let header = entry.header();
            let field = |e: std::io::Error| bad(format!("{}: {e}", path.display()));
            let (mode, uid, gid) = (
                header.mode().map_err(field)?,
                header.uid().map_err(field)?,
                header.gid().map_err(field)?,
            );
            make_fifo_within(rootfs, &path, mode, uid as u32, gid as u32)?;
            continue;
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

/// Whether `relative`'s parent lies inside `rootfs` with every link on the
/// way resolved: `Ok(false)` when the parent does not exist.
fn parent_within(rootfs: &Path, relative: &Path, what: &str) -> Result<bool, ArchiveError> {
    let parent = rootfs
        .join(relative)
        .parent()
        .map(Path::to_owned)
        .unwrap_or(rootfs.to_owned());
    let root = rootfs.canonicalize().map_err(ArchiveError::io(rootfs))?;
    match parent.canonicalize() {
        Ok(real) if real.starts_with(&root) => Ok(true),
        Ok(_) => Err(ArchiveError::Invalid(format!(
            "{what} {} lies behind a link out of the root",
            relative.display()
        ))),
        Err(_) => Ok(false),
    }
}

/// Makes the FIFO `rootfs/relative` (replacing what is there) with its
/// mode and owner, unless a symbolic link on the way leads out.
fn make_fifo_within(rootfs: &Path, relative: &Path, mode: u32, uid: u32, gid: u32) -> Result<(), ArchiveError> {
    if !parent_within(rootfs, relative, "rootfs diff entry")? {
        return Err(ArchiveError::Invalid(format!(
            "rootfs diff entry {} comes before its directory",
            relative.display()
        )));
    }
    let target = rootfs.join(relative);
    match std::fs::symlink_metadata(&target) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&target),
        Ok(_) => std::fs::remove_file(&target),
        Err(_) => Ok(()),
    }
    .map_err(ArchiveError::io(&target))?;
    let io = |e: nix::Error| ArchiveError::io(&target)(std::io::Error::from(e));
    nix::unistd::mkfifo(&target, nix::sys::stat::Mode::from_bits_truncate(0o600)).map_err(io)?;
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        &target,
        Some(uid.into()),
        Some(gid.into()),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(io)?;
    // After the owner: chown clears set-id bits.
    std::fs::set_permissions(&target, std::os::unix::fs::PermissionsExt::from_mode(mode & 0o7777))
        .map_err(ArchiveError::io(&target))
}

/// Removes `rootfs/relative` unless a symbolic link on the way leads out.
fn remove_within(rootfs: &Path, relative: &Path) -> Result<(), ArchiveError> {
    if !parent_within(rootfs, relative, "deleted file")? {
        return Ok(()); // the parent is gone already
    }
    let target = rootfs.join(relative);
    let result = match std::fs::symlink_metadata(&target) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&target),
        Ok(_) => std::fs::remove_file(&target),
        Err(_) => Ok(()),
    };
    result.map_err(ArchiveError::io(&target))
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
        assert_eq!(names, vec![".", "etc", "etc/new"]);
    }

    #[test]
    fn fifos_travel_and_sockets_are_left_out() {
        use std::os::unix::fs::PermissionsExt;
        let upper = tempfile::tempdir().unwrap();
        std::fs::create_dir(upper.path().join("tmp")).unwrap();
        nix::unistd::mkfifo(
            &upper.path().join("tmp/tick"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
        let _listening = std::os::unix::net::UnixListener::bind(upper.path().join("tmp/app.sock")).unwrap();
        let out = tempfile::tempdir().unwrap();
        let (tar_path, deleted) = (out.path().join("rootfs-diff.tar"), out.path().join("deleted.files"));
        write(upper.path(), &tar_path, &deleted).unwrap();

        let rootfs = tempfile::tempdir().unwrap();
        apply(rootfs.path(), &tar_path, &deleted).unwrap();
        let fifo = std::fs::symlink_metadata(rootfs.path().join("tmp/tick")).unwrap();
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.permissions().mode() & 0o7777, 0o640);
        assert!(!rootfs.path().join("tmp/app.sock").exists());
    }

    #[test]
    fn the_roots_mode_travels() {
        use std::os::unix::fs::PermissionsExt;
        let upper = tempfile::tempdir().unwrap();
        std::fs::set_permissions(upper.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = tempfile::tempdir().unwrap();
        let (tar_path, deleted) = (out.path().join("rootfs-diff.tar"), out.path().join("deleted.files"));
        write(upper.path(), &tar_path, &deleted).unwrap();
        let rootfs = tempfile::tempdir().unwrap();
        std::fs::set_permissions(rootfs.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        apply(rootfs.path(), &tar_path, &deleted).unwrap();
        let mode = std::fs::metadata(rootfs.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755);
    }

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
    fn a_fifo_behind_a_link_out_of_the_root_is_refused() {
        let rootfs = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), rootfs.path().join("tmp")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut builder = tar::Builder::new(std::fs::File::create(dir.path().join("d.tar")).unwrap());
        let mut fifo = tar::Header::new_gnu();
        fifo.set_entry_type(tar::EntryType::Fifo);
        fifo.set_mode(0o600);
        fifo.set_size(0);
        fifo.set_uid(0);
        fifo.set_gid(0);
        fifo.set_mtime(0);
        fifo.set_cksum();
        builder.append_data(&mut fifo, "tmp/f", std::io::empty()).unwrap();
        builder.into_inner().unwrap();
        std::fs::write(dir.path().join("deleted.json"), b"[]").unwrap();
        let refused = apply(
            rootfs.path(),
            &dir.path().join("d.tar"),
            &dir.path().join("deleted.json"),
        );
        let why = refused.unwrap_err().to_string();
        assert!(why.contains("link out of the root"), "{why}");
        assert!(!outside.path().join("f").exists());
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
