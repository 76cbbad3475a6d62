//! The logs of failed captures, kept where an operator can read them: a
//! failed CheckpointPod leaves its output directory empty, as the CRI
//! requires, and CRIU's `dump.log` would go with it. They are kept under
//! podckptd's state directory, private to root (they name the pod's files
//! and sockets), the latest `KEEP` of them.

use std::path::{Path, PathBuf};

use crate::archive::{self, ArchiveError};

/// Where, under the state directory.
pub const DIR: &str = "failed-captures";
/// How many are kept; older ones go as new ones come.
pub const KEEP: usize = 20;

#[derive(Clone, Debug)]
pub struct KeptLogs {
    dir: PathBuf,
    keep: usize,
}

impl KeptLogs {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join(DIR),
            keep: KEEP,
        }
    }

    /// Copies the log at `from` in, named by the time and `what` (a
    /// container's id), and removes the oldest beyond the bound; returns
    /// where it is kept.
    pub fn keep(&self, from: &Path, what: &str) -> Result<PathBuf, ArchiveError> {
        archive::create_private_dir_all(&self.dir)?;
        let stamp = humantime::format_rfc3339_micros(std::time::SystemTime::now())
            .to_string()
            .replace(':', "");
        let what: String = what.chars().filter(char::is_ascii_alphanumeric).take(12).collect();
        let kept = self.dir.join(format!("{stamp}-{what}-dump.log"));
        let bytes = std::fs::read(from).map_err(ArchiveError::io(from))?;
        archive::write_private(&kept, &bytes)?;
        self.prune()?;
        Ok(kept)
    }

    /// The kept logs, oldest first (their names begin with the time).
    pub fn list(&self) -> Result<Vec<PathBuf>, ArchiveError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ArchiveError::io(&self.dir)(e)),
        };
        let mut logs: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        Ok(logs)
    }

    fn prune(&self) -> Result<(), ArchiveError> {
        let logs = self.list()?;
        for old in &logs[..logs.len().saturating_sub(self.keep)] {
            std::fs::remove_file(old).map_err(ArchiveError::io(old))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_latest_are_kept_private() {
        let state = tempfile::tempdir().unwrap();
        let source = state.path().join("dump.log");
        let mut kept = KeptLogs::new(state.path());
        kept.keep = 3;
        let mut paths = Vec::new();
        for n in 0..5 {
            std::fs::write(&source, format!("log {n}")).unwrap();
            paths.push(kept.keep(&source, "0123456789abcdef/../x").unwrap());
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(kept.list().unwrap(), paths[2..].to_vec());
        assert_eq!(std::fs::read_to_string(&paths[4]).unwrap(), "log 4");
        assert!(
            paths[4]
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .ends_with("-0123456789ab-dump.log")
        );
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&paths[4]), 0o600);
        assert_eq!(mode(&state.path().join(DIR)), 0o700);
    }
}
