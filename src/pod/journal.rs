//! The record of containers podckptd has paused. It is written before the
//! first pause and cleared after the last resume, so a daemon killed in
//! between finds them on its next start and resumes them: no pod is ever
//! left frozen by us.

use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::archive::{self, ArchiveError};
use crate::backend::{Checkpointer, ContainerRef};

const FILE: &str = "paused.json";

/// Enough to resume a container without asking the runtime anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PausedSet {
    /// The handler's backend kind (its config's `backend`).
    #[serde(default = "PausedSet::criu")]
    pub backend: String,
    pub runtime: PathBuf,
    pub root: PathBuf,
    pub containers: Vec<ContainerRef>,
    /// The caller's directory the checkpoint is being built in. A daemon
    /// killed halfway leaves partial files there, which hold process memory,
    /// so recovery empties it unless the checkpoint was committed.
    #[serde(default)]
    pub output: Option<PathBuf>,
}

impl PausedSet {
    /// Journals written before backends were named held CRIU's only.
    fn criu() -> String {
        "criu".into()
    }

    fn backend(&self) -> Result<std::sync::Arc<dyn Checkpointer>, String> {
        crate::backend::for_handler(&self.backend, &self.runtime, &self.root)
    }
}

pub struct Journal {
    path: PathBuf,
    next: AtomicU64,
    // Serialises read-modify-write of the file between concurrent checkpoints.
    lock: Mutex<()>,
}

/// What `Journal::recover` found: the checkpoints a previous daemon left
/// under way, and how many of their containers it resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovered {
    pub entries: usize,
    pub resumed: usize,
}

impl Journal {
    pub fn open(state_dir: &Path) -> Result<Self, ArchiveError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(state_dir)
            .map_err(ArchiveError::io(state_dir))?;
        Ok(Self {
            path: state_dir.join(FILE),
            next: AtomicU64::new(0),
            lock: Mutex::new(()),
        })
    }

    /// Records a set about to be paused; returns its key for `clear`.
    pub fn record(&self, set: PausedSet) -> Result<String, ArchiveError> {
        let key = format!("{}-{}", std::process::id(), self.next.fetch_add(1, Ordering::Relaxed));
        self.update(|entries| {
            entries.insert(key.clone(), set);
        })?;
        Ok(key)
    }

    /// The set's containers are running again; only its output is left to
    /// account for.
    pub fn resumed(&self, key: &str) -> Result<(), ArchiveError> {
        self.update(|entries| {
            if let Some(set) = entries.get_mut(key) {
                set.containers.clear();
            }
        })
    }

    pub fn clear(&self, key: &str) -> Result<(), ArchiveError> {
        self.update(|entries| {
            entries.remove(key);
        })
    }

    /// Resumes everything a previous daemon left recorded, then forgets it.
    /// A container that is gone or already running is not an error.
    pub async fn recover(&self) -> Result<Recovered, ArchiveError> {
        let entries = {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.read()?
        };
        let mut resumed = 0;
        for set in entries.values() {
            let backend = match set.backend() {
                Ok(backend) => backend,
                Err(why) => {
                    warn!(containers = ?set.containers, %why, "cannot resume containers a previous podckptd paused");
                    continue;
                }
            };
            wait_for_orphans(backend.as_ref(), &set.containers).await;
            for container in &set.containers {
                match backend.resume(container).await {
                    Ok(()) => {
                        info!(container = %container.id, "resumed a container paused by a previous podckptd");
                        resumed += 1;
                    }
                    Err(error) => {
                        warn!(container = %container.id, %error, "could not resume (already running or gone?)")
                    }
                }
            }
            if let Some(output) = set.output.as_deref() {
                remove_partial(output);
            }
        }
        self.update(|entries| entries.clear())?;
        Ok(Recovered {
            entries: entries.len(),
            resumed,
        })
    }

    fn read(&self) -> Result<BTreeMap<String, PausedSet>, ArchiveError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| ArchiveError::Json {
                path: self.path.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(ArchiveError::io(&self.path)(e)),
        }
    }

    fn update(&self, change: impl FnOnce(&mut BTreeMap<String, PausedSet>)) -> Result<(), ArchiveError> {
        let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut entries = self.read()?;
        change(&mut entries);
        if entries.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ArchiveError::io(&self.path)(e)),
                _ => Ok(()),
            };
        }
        // A crash mid-write must never lose the record of a paused pod.
        archive::durable::replace_json(&self.path, &entries)
    }
}

/// Empties a checkpoint directory left half-written, keeping the directory,
/// which is the caller's. A committed checkpoint is whole and stays.
fn remove_partial(output: &Path) {
    let is_dir = std::fs::symlink_metadata(output).is_ok_and(|m| m.is_dir());
    if !output.is_absolute() || !is_dir || archive::is_committed(output) {
        return;
    }
    match archive::empty(output) {
        Ok(()) => info!(path = %output.display(), "removed a checkpoint a previous podckptd left half-written"),
        Err(error) => warn!(path = %output.display(), %error, "could not remove a half-written checkpoint"),
    }
}

/// Waits until no checkpoint a killed daemon started on these containers is
/// still running (see `checkpoints_in_flight`), for as long as a capture
/// may overrun its deadline.
async fn wait_for_orphans(backend: &dyn Checkpointer, containers: &[ContainerRef]) {
    let until = tokio::time::Instant::now() + crate::pod::capture::CAPTURE_OVERRUN;
    let mut orphans = backend.checkpoints_in_flight(containers);
    if !orphans.is_empty() {
        info!(
            ?orphans,
            "waiting for checkpoints left by a previous podckptd to end before resuming"
        );
    }
    while !orphans.is_empty() {
        if tokio::time::Instant::now() >= until {
            warn!(
                ?orphans,
                "checkpoints left by a previous podckptd are still running; resuming anyway"
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        orphans = backend.checkpoints_in_flight(containers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_clear_leave_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let journal = Journal::open(dir.path()).unwrap();
        let set = PausedSet {
            backend: "criu".into(),
            runtime: "runc".into(),
            root: "/run/r".into(),
            containers: vec![ContainerRef::id("a")],
            output: None,
        };
        let k1 = journal.record(set.clone()).unwrap();
        let k2 = journal.record(set).unwrap();
        assert_eq!(journal.read().unwrap().len(), 2);
        journal.clear(&k1).unwrap();
        assert_eq!(journal.read().unwrap().keys().collect::<Vec<_>>(), vec![&k2]);
        journal.clear(&k2).unwrap();
        assert!(!dir.path().join(FILE).exists());
    }
}
