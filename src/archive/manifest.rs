//! `manifest.json`: what a checkpoint holds, and the SHA-256 of every file,
//! so that a restore can refuse anything changed, added or missing.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{ArchiveError, FORMAT_VERSION, MANIFEST};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub sha256: String,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub backend: String,
    pub criu_version: String,
    pub pod_sandbox_id: String,
    /// RFC 3339, UTC.
    pub created: String,
    /// Every regular file but the manifest, by path relative to the root.
    pub files: BTreeMap<String, FileEntry>,
}

impl Manifest {
    /// Hashes every file under `root`. Anything that is not a regular file
    /// or a directory is refused: a checkpoint holds no links or devices.
    pub fn build(root: &Path, backend: &str, criu_version: &str, pod_sandbox_id: &str) -> Result<Self, ArchiveError> {
        Ok(Self {
            format_version: FORMAT_VERSION,
            backend: backend.to_owned(),
            criu_version: criu_version.to_owned(),
            pod_sandbox_id: pod_sandbox_id.to_owned(),
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            files: hash_tree(root)?,
        })
    }

    /// Checks that `root` holds exactly the files listed, with their hashes.
    pub fn verify(&self, root: &Path) -> Result<(), ArchiveError> {
        let found = hash_tree(root)?;
        for (path, entry) in &self.files {
            match found.get(path) {
                None => {
                    return Err(ArchiveError::Invalid(format!(
                        "{path} is listed in the manifest but missing"
                    )));
                }
                Some(actual) if actual != entry => {
                    return Err(ArchiveError::Invalid(format!(
                        "{path} does not match its SHA-256 in the manifest"
                    )));
                }
                Some(_) => {}
            }
        }
        if let Some(extra) = found.keys().find(|p| !self.files.contains_key(*p)) {
            return Err(ArchiveError::Invalid(format!("{extra} is not listed in the manifest")));
        }
        Ok(())
    }
}

fn hash_tree(root: &Path) -> Result<BTreeMap<String, FileEntry>, ArchiveError> {
    let mut files = BTreeMap::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false).sort_by_file_name() {
        let entry = entry.map_err(ArchiveError::walk(root))?;
        let kind = entry.file_type();
        if kind.is_dir() {
            continue;
        }
        let relative = entry.path().strip_prefix(root).expect("walkdir stays under its root");
        let name = relative
            .to_str()
            .ok_or_else(|| ArchiveError::Invalid(format!("{} is not UTF-8", relative.display())))?;
        if !kind.is_file() {
            return Err(ArchiveError::Invalid(format!("{name} is not a regular file")));
        }
        if name == MANIFEST {
            continue;
        }
        files.insert(name.to_owned(), hash_file(entry.path())?);
    }
    Ok(files)
}

fn hash_file(path: &Path) -> Result<FileEntry, ArchiveError> {
    let mut file = std::fs::File::open(path).map_err(ArchiveError::io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(ArchiveError::io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(FileEntry {
        sha256: format!("{:x}", hasher.finalize()),
        size,
    })
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
            "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed"
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
    fn symlinks_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/shadow", dir.path().join("escape")).unwrap();
        assert!(Manifest::build(dir.path(), "b", "v", "p").is_err());
    }
}
