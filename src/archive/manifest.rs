//! `manifest.json`: what a checkpoint holds, and the SHA-256 of every file
//! (chunk by chunk, see `digest`), so that a restore can refuse anything
//! changed, added or missing.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::digest::{self, CHUNK_SIZE, CHUNK_SIZES, Listed};
use super::{ArchiveError, FORMAT_VERSION, MANIFEST};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub size: u64,
    /// The SHA-256 of each `chunk_size` piece of the file, in order. A file
    /// no larger than one chunk has one, its plain SHA-256.
    pub sha256: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub backend: String,
    /// The version of the backend's engine: CRIU's, or runsc's. Manifests
    /// written before gVisor call it `criu_version`.
    #[serde(alias = "criu_version")]
    pub engine_version: String,
    pub pod_sandbox_id: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// The size of the pieces each file is hashed in.
    pub chunk_size: u64,
    /// Every regular file but the manifest, by path relative to the root.
    pub files: BTreeMap<String, FileEntry>,
    /// How long the pod's processes were stopped: from the first container
    /// paused to the last one resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_ms: Option<u64>,
}

impl Manifest {
    /// Hashes every file under `root`.
    pub fn build(root: &Path, backend: &str, engine_version: &str, pod_sandbox_id: &str) -> Result<Self, ArchiveError> {
        Self::build_with(root, backend, engine_version, pod_sandbox_id, BTreeMap::new())
    }

    /// Lists every file under `root`, taking the entries in `known` (hashed
    /// earlier by `digest_tree`, and not written since) as they are and
    /// hashing the rest. A known entry that is not there is an error, so the
    /// manifest always describes exactly what is on disk.
    pub fn build_with(
        root: &Path,
        backend: &str,
        engine_version: &str,
        pod_sandbox_id: &str,
        mut known: BTreeMap<String, FileEntry>,
    ) -> Result<Self, ArchiveError> {
        let listed = listed_without_manifest(root)?;
        let mut files = BTreeMap::new();
        let mut unknown = Vec::new();
        for file in listed {
            match known.remove(&file.name) {
                Some(entry) if entry.size == file.size => {
                    files.insert(file.name, entry);
                }
                Some(_) => {
                    return Err(ArchiveError::Invalid(format!(
                        "{} changed size after it was hashed",
                        file.name
                    )));
                }
                None => unknown.push(file),
            }
        }
        if let Some(name) = known.keys().next() {
            return Err(ArchiveError::Invalid(format!("{name} was hashed but is gone")));
        }
        files.extend(entries(unknown, CHUNK_SIZE)?);
        Ok(Self {
            format_version: FORMAT_VERSION,
            backend: backend.to_owned(),
            engine_version: engine_version.to_owned(),
            pod_sandbox_id: pod_sandbox_id.to_owned(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            chunk_size: CHUNK_SIZE,
            files,
            freeze_ms: None,
        })
    }

    /// Checks that `root` holds exactly the files listed, with their sizes
    /// and hashes. Sizes and names are compared before any byte is read.
    pub fn verify(&self, root: &Path) -> Result<(), ArchiveError> {
        let listed = self.listing(root)?;
        self.compare_hashes(&listed)
    }

    /// The files under `root`, in the manifest's order, if they are exactly
    /// those listed, with the sizes listed; no byte is read.
    pub fn listing(&self, root: &Path) -> Result<Vec<Listed>, ArchiveError> {
        self.check_chunk_size()?;
        let listed = listed_without_manifest(root)?;
        if let Some(extra) = listed.iter().find(|f| !self.files.contains_key(&f.name)) {
            return Err(ArchiveError::Invalid(format!(
                "{} is not listed in the manifest",
                extra.name
            )));
        }
        // Every name on disk is in the manifest and names are unique, so the
        // counts differ exactly when one listed is missing.
        if listed.len() != self.files.len() {
            let on_disk: std::collections::BTreeSet<&str> = listed.iter().map(|f| f.name.as_str()).collect();
            let missing = self.files.keys().find(|name| !on_disk.contains(name.as_str()));
            return Err(ArchiveError::Invalid(format!(
                "{} is listed in the manifest but missing",
                missing.map_or("a file", String::as_str)
            )));
        }
        for file in &listed {
            let entry = &self.files[&file.name];
            if entry.size != file.size || entry.sha256.len() != digest::chunk_count(file.size, self.chunk_size) {
                return Err(mismatch(&file.name));
            }
        }
        Ok(listed)
    }

    /// Checks a manifest that came from elsewhere before anything is made
    /// from it: its format, its chunk size, one digest per chunk, and names
    /// that stay inside the checkpoint (relative, no `.` or `..`, no empty
    /// part, none both a file and a directory).
    pub fn check_untrusted(&self) -> Result<(), ArchiveError> {
        if self.format_version != FORMAT_VERSION {
            return Err(ArchiveError::Invalid(format!(
                "manifest format version {} is not {FORMAT_VERSION}, the one this podckpt reads; take the checkpoint again with this version",
                self.format_version
            )));
        }
        self.check_chunk_size()?;
        let mut directories = std::collections::BTreeSet::new();
        for (name, entry) in &self.files {
            check_name(name)?;
            if entry.sha256.len() != digest::chunk_count(entry.size, self.chunk_size)
                || !entry.sha256.iter().all(|d| is_sha256_hex(d))
            {
                return Err(ArchiveError::Invalid(format!(
                    "{name}: the manifest does not give one SHA-256 per {} bytes",
                    self.chunk_size
                )));
            }
            let mut parent = name.as_str();
            while let Some((dir, _)) = parent.rsplit_once('/') {
                directories.insert(dir);
                parent = dir;
            }
        }
        if let Some(both) = directories.iter().find(|d| self.files.contains_key(**d)) {
            return Err(ArchiveError::Invalid(format!(
                "{both} is listed both as a file and as a directory"
            )));
        }
        Ok(())
    }

    /// The bytes the files listed hold in all. A manifest from elsewhere
    /// may claim sizes whose sum does not fit: that is "more than any disk".
    pub fn total_size(&self) -> u64 {
        self.files.values().map(|f| f.size).fold(0, u64::saturating_add)
    }

    /// Hashes only `names` under `root` and compares them with the manifest:
    /// for a checkpoint whose listing and sizes are known to be unchanged
    /// (see `Seals`).
    pub fn verify_files(&self, root: &Path, names: &[String]) -> Result<(), ArchiveError> {
        self.check_chunk_size()?;
        let listed = names
            .iter()
            .filter(|name| name.as_str() != MANIFEST)
            .map(|name| {
                let entry = self.files.get(name).ok_or_else(|| mismatch(name))?;
                Ok(Listed {
                    name: name.clone(),
                    path: root.join(name),
                    size: entry.size,
                })
            })
            .collect::<Result<Vec<_>, ArchiveError>>()?;
        self.compare_hashes(&listed)
    }

    fn check_chunk_size(&self) -> Result<(), ArchiveError> {
        if CHUNK_SIZES.contains(&self.chunk_size) {
            return Ok(());
        }
        Err(ArchiveError::Invalid(format!(
            "chunk size {} is outside {CHUNK_SIZES:?}",
            self.chunk_size
        )))
    }

    fn compare_hashes(&self, listed: &[Listed]) -> Result<(), ArchiveError> {
        let digests = digest::hash_files(listed, self.chunk_size)?;
        for (file, actual) in listed.iter().zip(digests) {
            if self.files[&file.name].sha256 != actual {
                return Err(mismatch(&file.name));
            }
        }
        Ok(())
    }
}

fn mismatch(name: &str) -> ArchiveError {
    ArchiveError::Invalid(format!("{name} does not match its size and SHA-256 in the manifest"))
}

/// Longer names than Linux takes for a path or one of its parts.
const NAME_MAX: usize = 255;
const PATH_MAX: usize = 4095;
/// A checkpoint is four levels deep (`ID-NAME/checkpoint/...`); far deeper
/// names only serve to exhaust whoever removes them again.
const DEPTH_MAX: usize = 16;

fn check_name(name: &str) -> Result<(), ArchiveError> {
    let refuse = |why: &str| Err(ArchiveError::Invalid(format!("{name:?} in the manifest {why}")));
    if name.is_empty() || name.len() > PATH_MAX {
        return refuse("is not a path this node can hold");
    }
    if name.starts_with('/') {
        return refuse("is absolute");
    }
    if name.contains('\0') {
        return refuse("holds a NUL byte");
    }
    let first = name.split('/').next().unwrap_or_default();
    if first == MANIFEST || first == super::building::MANIFEST_PARTIAL {
        return refuse("takes the manifest's own name");
    }
    if name.split('/').count() > DEPTH_MAX {
        return refuse("is deeper than any checkpoint");
    }
    for part in name.split('/') {
        match part {
            "" => return refuse("has an empty part"),
            "." | ".." => return refuse("leaves its directory"),
            p if p.len() > NAME_MAX => return refuse("has a part longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

fn is_sha256_hex(digest: &str) -> bool {
    digest.len() == 64 && digest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn listed_without_manifest(root: &Path) -> Result<Vec<Listed>, ArchiveError> {
    let mut listed = digest::list(root)?;
    listed.retain(|f| f.name != MANIFEST);
    Ok(listed)
}

fn entries(files: Vec<Listed>, chunk_size: u64) -> Result<BTreeMap<String, FileEntry>, ArchiveError> {
    let digests = digest::hash_files(&files, chunk_size)?;
    Ok(files
        .into_iter()
        .zip(digests)
        .map(|(file, sha256)| {
            (
                file.name,
                FileEntry {
                    size: file.size,
                    sha256,
                },
            )
        })
        .collect())
}

/// The entries of every file under `root`, named as seen from `root`'s
/// parent (`FOLDER/...`), ready for `Manifest::build_with`. The checkpoint
/// hashes a container's folder as soon as it is complete, while the other
/// containers are still being captured.
pub fn digest_tree(root: &Path, folder: &str) -> Result<BTreeMap<String, FileEntry>, ArchiveError> {
    let mut listed = digest::list(root)?;
    for file in &mut listed {
        file.name = format!("{folder}/{}", file.name);
    }
    entries(listed, CHUNK_SIZE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_changed_missing_and_extra_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("c")).unwrap();
        std::fs::write(dir.path().join("c/a"), b"one").unwrap();
        std::fs::write(dir.path().join("pod.dump"), b"{}").unwrap();
        let m = Manifest::build(dir.path(), "criu-runc", "4.1.1", "pod").unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(
            m.files["c/a"].sha256,
            ["7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed"]
        );
        m.verify(dir.path()).unwrap();

        std::fs::write(dir.path().join("c/a"), b"two").unwrap();
        assert!(
            m.verify(dir.path())
                .unwrap_err()
                .to_string()
                .contains("c/a does not match")
        );
        std::fs::write(dir.path().join("c/a"), b"one").unwrap();
        std::fs::write(dir.path().join("c/extra"), b"").unwrap();
        assert!(
            m.verify(dir.path())
                .unwrap_err()
                .to_string()
                .contains("c/extra is not listed")
        );
        std::fs::remove_file(dir.path().join("c/extra")).unwrap();
        std::fs::remove_file(dir.path().join("pod.dump")).unwrap();
        assert!(
            m.verify(dir.path())
                .unwrap_err()
                .to_string()
                .contains("pod.dump is listed")
        );
    }

    #[test]
    fn build_with_takes_known_entries_and_hashes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("c")).unwrap();
        std::fs::write(dir.path().join("c/a"), b"one").unwrap();
        let known = digest_tree(&dir.path().join("c"), "c").unwrap();
        assert_eq!(known.keys().collect::<Vec<_>>(), ["c/a"]);
        std::fs::write(dir.path().join("pod.options"), b"{}").unwrap();
        let m = Manifest::build_with(dir.path(), "b", "v", "p", known.clone()).unwrap();
        assert_eq!(
            m,
            Manifest {
                created: m.created.clone(),
                ..Manifest::build(dir.path(), "b", "v", "p").unwrap()
            }
        );

        std::fs::write(dir.path().join("c/a"), b"longer").unwrap();
        let err = Manifest::build_with(dir.path(), "b", "v", "p", known.clone()).unwrap_err();
        assert!(err.to_string().contains("changed size"), "{err}");
        std::fs::remove_file(dir.path().join("c/a")).unwrap();
        let err = Manifest::build_with(dir.path(), "b", "v", "p", known).unwrap_err();
        assert!(err.to_string().contains("gone"), "{err}");
    }

    #[test]
    fn a_manifest_cannot_choose_a_silly_chunk_size() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), b"one").unwrap();
        let mut m = Manifest::build(dir.path(), "b", "v", "p").unwrap();
        m.chunk_size = 1;
        assert!(m.verify(dir.path()).unwrap_err().to_string().contains("chunk size"));
    }

    #[test]
    fn symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/shadow", dir.path().join("escape")).unwrap();
        assert!(Manifest::build(dir.path(), "b", "v", "p").is_err());
    }
}
