//! The restore marker. RestorePod writes a token file, private to root,
//! naming the checkpoint folder and the sandbox and container it is for, and
//! puts the token's path in a container annotation. The interposer trusts
//! the annotation only as far as the token file is root's own: a pod author
//! who sets the annotation by hand gets nothing restored.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::InterposerError;
use super::identity::SpecIdentity;
use crate::archive::{self, ArchiveError};

/// The container annotation that carries the token's path. containerd must
/// pass `io.podckpt.*` annotations to the runtime (`container_annotations`).
pub const ANNOTATION: &str = "io.podckpt.restore";
/// The pod annotation that carries a sandbox's token, for a backend that
/// restores whole sandboxes (`pod_annotations`). A key of its own: containerd
/// passes pod annotations on to every container of the pod as well.
pub const SANDBOX_ANNOTATION: &str = "io.podckpt.restore-sandbox";

/// What a token on disk was issued for, as far as pruning needs to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IssuedFor {
    /// A container of this sandbox.
    Sandbox(String),
    /// A sandbox still being created: it has no id yet.
    SandboxToBe,
    /// Unreadable: nothing it can restore.
    Nothing,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreToken {
    /// The container's folder inside a verified pod checkpoint.
    pub checkpoint: PathBuf,
    pub sandbox_id: String,
    pub container_name: String,
    /// A sandbox's own token names the pod by its UID: the sandbox's id is
    /// not known until it exists. Empty for a container's token.
    #[serde(default)]
    pub pod_uid: String,
    /// The handler's backend (its config's `backend`), which restores it.
    pub backend: String,
    /// Restore memory on first touch, if the backend can.
    #[serde(default)]
    pub lazy_pages: bool,
}

impl RestoreToken {
    /// Writes the token into `dir` (created 0700); returns its path.
    pub fn write(&self, dir: &Path) -> Result<PathBuf, ArchiveError> {
        archive::create_private_dir_all(dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let path = dir.join(format!("{}-{}-{nanos}.json", self.sandbox_id, self.container_name));
        // Whole or absent: podckpt-runc refuses what it cannot parse, and
        // a restore must not hang on a token half-written by a crash.
        archive::durable::replace_json(&path, self)?;
        Ok(path)
    }

    /// Every token in `dir` (podckptd's own), with what it was issued for.
    pub fn list(dir: &Path) -> Result<Vec<(PathBuf, IssuedFor)>, ArchiveError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ArchiveError::io(dir)(e)),
        };
        let mut tokens = Vec::new();
        for entry in entries {
            let path = entry.map_err(ArchiveError::io(dir))?.path();
            // Not a token (yet): `replace_json`'s temporary, being written.
            if path.extension().is_none_or(|ext| ext != "json") {
                continue;
            }
            let issued_for = match std::fs::read(&path)
                .ok()
                .and_then(|bytes| serde_json::from_slice::<Self>(&bytes).ok())
            {
                Some(token) if !token.pod_uid.is_empty() => IssuedFor::SandboxToBe,
                Some(token) => IssuedFor::Sandbox(token.sandbox_id),
                None => IssuedFor::Nothing,
            };
            tokens.push((path, issued_for));
        }
        Ok(tokens)
    }

    /// Whether the OCI spec is of the container (or sandbox) this token was
    /// issued for, as the runtime's CRI annotations name it.
    pub fn check_issued_for(&self, spec: &serde_json::Value, path: &Path) -> Result<(), InterposerError> {
        let spec = SpecIdentity::of(spec);
        let matches = if self.pod_uid.is_empty() {
            !spec.is_sandbox
                && !spec.sandbox_id.is_empty()
                && spec.sandbox_id == self.sandbox_id
                && spec.container_name == self.container_name
        } else {
            spec.is_sandbox && spec.pod_uid == self.pod_uid
        };
        if matches {
            return Ok(());
        }
        Err(InterposerError::UntrustedToken(format!(
            "{} was issued for another container ({:?} in {:?}, pod UID {:?})",
            path.display(),
            self.container_name,
            self.sandbox_id,
            self.pod_uid
        )))
    }

    /// Loads a token only if it and its directory belong to root and nobody
    /// else can write them, and the path has no symbolic link in it.
    pub fn load_trusted(path: &Path) -> Result<Self, InterposerError> {
        let untrusted = |why: &str| InterposerError::UntrustedToken(format!("{}: {why}", path.display()));
        if !path.is_absolute() {
            return Err(untrusted("not an absolute path"));
        }
        let canonical = path.canonicalize().map_err(|e| untrusted(&e.to_string()))?;
        if canonical != path {
            return Err(untrusted("the path goes through a symbolic link"));
        }
        let meta = std::fs::symlink_metadata(path).map_err(|e| untrusted(&e.to_string()))?;
        if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o077 != 0 {
            return Err(untrusted("not a root-owned file private to root"));
        }
        let parent = path.parent().ok_or_else(|| untrusted("no parent directory"))?;
        let dir = std::fs::metadata(parent).map_err(|e| untrusted(&e.to_string()))?;
        if dir.uid() != 0 || dir.mode() & 0o022 != 0 {
            return Err(untrusted("its directory is writable by others than root"));
        }
        let bytes = std::fs::read(path).map_err(|e| untrusted(&e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| untrusted(&e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn token() -> RestoreToken {
        RestoreToken {
            checkpoint: "/ck/id-c".into(),
            sandbox_id: "sb".into(),
            container_name: "c".into(),
            pod_uid: String::new(),
            backend: "criu".into(),
            lazy_pages: false,
        }
    }

    #[test]
    fn a_private_token_round_trips() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = token().write(&dir.path().join("restores")).unwrap();
        assert_eq!(RestoreToken::load_trusted(&path).unwrap(), token());
    }

    #[test]
    fn loose_permissions_and_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = token().write(&dir.path().join("restores")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(RestoreToken::load_trusted(&path).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(RestoreToken::load_trusted(&link).is_err());
        assert!(RestoreToken::load_trusted(Path::new("relative.json")).is_err());
    }
}
