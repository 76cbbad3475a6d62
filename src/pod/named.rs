//! Checkpoints kept by name under the node's checkpoint root, as
//! `ROOT/NAMESPACE/NAME`: what `podckpt checkpointp --name` writes, what
//! the node agent writes for a PodCheckpoint, and what a pod's
//! `podckpt.io/restore-from: NAME` names, always in the pod's own namespace.
//! A name is never a path: a DNS-1123 subdomain, as a Kubernetes object's
//! name; a namespace a DNS-1123 label, as Kubernetes has them.

use std::path::{Path, PathBuf};

use super::error::PodError;
use crate::archive::owned_path::{self, Sticky};
use crate::archive::{self, ArchiveError};

/// The pod annotation that asks for a restore when the pod is created.
pub const RESTORE_FROM: &str = "podckpt.io/restore-from";

/// A DNS-1123 label: lowercase letters, digits and `-`, beginning and
/// ending with a letter or digit, at most `max` long.
fn is_label(text: &str, max: usize) -> bool {
    let bytes = text.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= max
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A checkpoint's name: a DNS-1123 subdomain (labels joined by dots).
pub fn check_name(name: &str) -> Result<(), PodError> {
    if name.len() <= 253 && name.split('.').all(|label| is_label(label, 63)) {
        return Ok(());
    }
    Err(PodError::InvalidArgument(format!(
        "checkpoint name {name:?} is not a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', beginning and ending with a letter or digit, at most 253 characters): a checkpoint is named, never given as a path"
    )))
}

/// A Kubernetes namespace: a DNS-1123 label.
pub fn check_namespace(namespace: &str) -> Result<(), PodError> {
    if is_label(namespace, 63) {
        return Ok(());
    }
    Err(PodError::InvalidArgument(format!(
        "namespace {namespace:?} is not a DNS-1123 label; a checkpoint by name belongs to a pod's namespace"
    )))
}

/// The checkpoint root of this node.
#[derive(Clone, Debug)]
pub struct NamedCheckpoints {
    root: PathBuf,
}

impl NamedCheckpoints {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where checkpoint `name` of `namespace` is, whether or not it exists.
    pub fn path(&self, namespace: &str, name: &str) -> Result<PathBuf, PodError> {
        check_namespace(namespace)?;
        check_name(name)?;
        Ok(self.root.join(namespace).join(name))
    }

    /// An existing checkpoint `name` of `namespace`.
    pub fn find(&self, namespace: &str, name: &str) -> Result<PathBuf, PodError> {
        let path = self.path(namespace, name)?;
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.is_dir() => {
                self.refuse_if_redirectable(&path, Sticky::Refused)?;
                Ok(path)
            }
            Ok(_) => Err(PodError::FailedPrecondition(format!(
                "checkpoint {name} of namespace {namespace}: {} is not a directory",
                path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(PodError::NotFound(format!(
                "checkpoint {name} of namespace {namespace} is not on this node (no {}); take it with `podckpt checkpointp --name {name}`, or schedule the pod onto the node that holds it",
                path.display()
            ))),
            Err(e) => Err(ArchiveError::io(&path)(e).into()),
        }
    }

    /// Where the owner of checkpoint `name` of `namespace` is kept: beside
    /// it, under a name no checkpoint can have.
    fn owner_path(&self, namespace: &str, name: &str) -> PathBuf {
        self.root.join(namespace).join(format!(".{name}.owner"))
    }

    /// The owner Prepare was given for it, if any.
    pub fn owner(&self, namespace: &str, name: &str) -> String {
        std::fs::read_to_string(self.owner_path(namespace, name)).unwrap_or_default()
    }

    /// Makes the empty, private directory for checkpoint `name` of
    /// `namespace`, and the root and namespace directories above it; keeps
    /// `owner` beside it, if given.
    pub fn prepare(&self, namespace: &str, name: &str, owner: &str) -> Result<PathBuf, PodError> {
        let path = self.path(namespace, name)?;
        let namespace_dir = path.parent().expect("ROOT/NAMESPACE/NAME");
        archive::create_private_dir_all(namespace_dir)?;
        self.refuse_if_redirectable(namespace_dir, Sticky::Refused)?;
        match archive::create_private_dir(&path) {
            Ok(()) => {}
            Err(ArchiveError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(PodError::AlreadyExists(format!(
                    "checkpoint {name} of namespace {namespace} exists already ({}); delete it first, or choose another name",
                    path.display()
                )));
            }
            Err(e) => return Err(e.into()),
        }
        let owner_path = self.owner_path(namespace, name);
        let _ = std::fs::remove_file(&owner_path);
        if !owner.is_empty() {
            archive::write_private(&owner_path, owner.as_bytes())?;
        }
        // Its name survives a power cut before the checkpoint is committed.
        archive::durable::sync_dir(namespace_dir)?;
        Ok(path)
    }

    /// Removes checkpoint `name` of `namespace` whole; false if there was none.
    pub fn delete(&self, namespace: &str, name: &str) -> Result<bool, PodError> {
        let path = self.path(namespace, name)?;
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(ArchiveError::io(&path)(e).into()),
            Ok(_) => {}
        }
        self.refuse_if_redirectable(path.parent().expect("ROOT/NAMESPACE/NAME"), Sticky::Refused)?;
        std::fs::remove_dir_all(&path).map_err(ArchiveError::io(&path))?;
        let _ = std::fs::remove_file(self.owner_path(namespace, name));
        archive::durable::sync_dir(path.parent().expect("ROOT/NAMESPACE/NAME"))?;
        Ok(true)
    }

    /// Every checkpoint directory under the root: (namespace, name, path).
    /// Entries that are not a namespace and a name are passed over.
    pub fn list(&self) -> Result<Vec<(String, String, PathBuf)>, PodError> {
        let mut found = Vec::new();
        let namespaces = match std::fs::read_dir(&self.root) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
            other => other.map_err(ArchiveError::io(&self.root))?,
        };
        for namespace in namespaces.filter_map(Result::ok) {
            let Some(ns) = namespace.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if check_namespace(&ns).is_err() || !namespace.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let Ok(names) = std::fs::read_dir(namespace.path()) else {
                continue;
            };
            for entry in names.filter_map(Result::ok) {
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                if check_name(&name).is_ok() && entry.file_type().is_ok_and(|t| t.is_dir()) {
                    found.push((ns.clone(), name, entry.path()));
                }
            }
        }
        found.sort();
        Ok(found)
    }

    fn refuse_if_redirectable(&self, dir: &Path, sticky: Sticky) -> Result<(), PodError> {
        match owned_path::changeable_by_others(dir, sticky).map_err(ArchiveError::io(dir))? {
            None => Ok(()),
            Some(why) => Err(PodError::FailedPrecondition(format!(
                "{why}; the checkpoint root must be changeable by root alone"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_subdomains_and_never_paths() {
        for good in ["warm", "model-7", "a.b-c.d", "0", &"x".repeat(63)] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "..",
            ".",
            "../x",
            "a/b",
            "/abs",
            "Upper",
            "-a",
            "a-",
            "a..b",
            "a_b",
            "a b",
            &"x".repeat(64),
        ] {
            let err = check_name(bad).unwrap_err().to_string();
            assert!(err.contains("DNS-1123"), "{bad}: {err}");
        }
        assert!(check_namespace("default").is_ok());
        assert!(check_namespace("a.b").is_err());
        assert!(check_namespace("").is_err());
    }

    #[test]
    fn prepare_find_list_and_delete() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let named = NamedCheckpoints::new(dir.path().join("root"));
        let found = named.find("team-a", "warm").unwrap_err();
        assert!(matches!(found, PodError::NotFound(_)), "{found}");
        let path = named.prepare("team-a", "warm", "podcheckpoint/u-1").unwrap();
        assert_eq!(named.owner("team-a", "warm"), "podcheckpoint/u-1");
        assert_eq!(path, dir.path().join("root/team-a/warm"));
        use std::os::unix::fs::PermissionsExt;
        for made in [dir.path().join("root"), dir.path().join("root/team-a"), path.clone()] {
            assert_eq!(
                std::fs::metadata(&made).unwrap().permissions().mode() & 0o777,
                0o700,
                "{made:?}"
            );
        }
        assert!(matches!(
            named.prepare("team-a", "warm", ""),
            Err(PodError::AlreadyExists(_))
        ));
        assert_eq!(named.find("team-a", "warm").unwrap(), path);
        std::fs::write(dir.path().join("root/team-a/not a name"), b"").unwrap();
        assert_eq!(
            named.list().unwrap(),
            vec![("team-a".to_string(), "warm".to_string(), path.clone())]
        );
        assert!(named.delete("team-a", "warm").unwrap());
        assert!(!named.delete("team-a", "warm").unwrap());
        assert_eq!(named.owner("team-a", "warm"), "");
        assert!(!path.exists());
        assert!(matches!(
            named.path("team-a", "../etc"),
            Err(PodError::InvalidArgument(_))
        ));
    }

    #[test]
    fn a_root_others_can_change_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("team-a")).unwrap();
        std::fs::set_permissions(root.join("team-a"), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let named = NamedCheckpoints::new(&root);
        let refused = named.prepare("team-a", "warm", "").unwrap_err();
        assert!(refused.to_string().contains("another user could redirect"), "{refused}");
    }
}
