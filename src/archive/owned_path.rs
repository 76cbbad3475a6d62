//! Whether a directory that root writes into can be redirected by someone
//! else. Root writes checkpoints (an import, a checkpoint by name) under
//! names it did not choose alone; if another user could write a directory
//! on the way, or rename one above it, they could swap a part of the path
//! for a symbolic link and have root write, or delete, wherever it points.
//! So every directory from `/` down must belong to root (or to this user)
//! and be writable by no one else, unless it is sticky (as `/tmp` is),
//! where others may not rename what is not theirs.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Sticky {
    /// `dir` itself may be writable by others if it is sticky.
    Allowed,
    /// Not even sticky: others could plant a link at a name root is about
    /// to make in it.
    Refused,
}

/// Why `dir` (canonical) or a directory above it could be changed by
/// another user than root and this one; None when it cannot.
pub fn changeable_by_others(dir: &Path, sticky_dir: Sticky) -> Result<Option<String>, std::io::Error> {
    let me = nix::unistd::geteuid().as_raw();
    for at in dir.ancestors() {
        let meta = std::fs::metadata(at)?;
        let owner_ok = meta.uid() == 0 || meta.uid() == me;
        let others_write = meta.mode() & 0o022 != 0;
        let sticky = meta.mode() & 0o1000 != 0;
        let sticky_ok = sticky && (at != dir || sticky_dir == Sticky::Allowed);
        if !(owner_ok && (!others_write || sticky_ok)) {
            return Ok(Some(format!(
                "{} is owned by uid {} with mode {:o}: another user could redirect what is written under it",
                at.display(),
                meta.uid(),
                meta.mode() & 0o7777
            )));
        }
    }
    Ok(None)
}
