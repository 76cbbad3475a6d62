//! How fast this node checkpoints, from the checkpoints it has taken: the
//! pre-flight check's estimate of how long the next one will take.
//! Remembered in the state directory, so that a restarted daemon still knows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tracing::warn;

use crate::archive::durable;

/// How many of the latest checkpoints of each backend the median is taken
/// over: enough to ride out one slow run, few enough to follow a new disk.
const KEPT: usize = 9;
/// A checkpoint smaller than this is mostly fixed cost (process starts,
/// syncs): its rate would promise too much of a large one.
const SMALLEST: u64 = 1 << 20;

pub struct DumpRates {
    path: PathBuf,
    /// Bytes per second, by backend, oldest first.
    rates: Mutex<BTreeMap<String, Vec<u64>>>,
}

impl DumpRates {
    /// What `state_dir` remembers; a missing or unreadable record starts afresh.
    pub fn open(state_dir: &Path) -> Self {
        let path = state_dir.join("dump-rates.json");
        let rates = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|error| {
                warn!(path = %path.display(), %error, "ignoring an unreadable record of dump rates");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        Self {
            path,
            rates: Mutex::new(rates),
        }
    }

    /// One checkpoint of `bytes` by `backend` that took `took` from the
    /// call's start to its commit.
    pub fn record(&self, backend: &str, bytes: u64, took: Duration) {
        if bytes < SMALLEST || took.is_zero() {
            return;
        }
        let rate = (bytes as f64 / took.as_secs_f64()) as u64;
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let kept = rates.entry(backend.to_owned()).or_default();
        kept.push(rate);
        if kept.len() > KEPT {
            kept.remove(0);
        }
        // Only an estimate: losing it costs one less accurate pre-flight.
        if let Err(error) = durable::replace_json(&self.path, &*rates) {
            warn!(%error, "could not remember the dump rate");
        }
    }

    /// The median rate of `backend`'s latest checkpoints, in bytes per second.
    pub fn median(&self, backend: &str) -> Option<u64> {
        let rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let mut kept = rates.get(backend)?.clone();
        kept.sort_unstable();
        kept.get(kept.len() / 2).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_the_latest_is_kept_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let rates = DumpRates::open(dir.path());
        assert_eq!(rates.median("criu-runc"), None);
        // 100, 200 ... 1200 MiB/s: only the latest nine count.
        for n in 1..=12u64 {
            rates.record("criu-runc", (n * 100) << 20, Duration::from_secs(1));
        }
        rates.record("criu-runc", 1000, Duration::from_millis(1));
        assert_eq!(rates.median("criu-runc"), Some(800 << 20));
        assert_eq!(DumpRates::open(dir.path()).median("criu-runc"), Some(800 << 20));
        assert_eq!(rates.median("runsc"), None);
    }

    #[test]
    fn an_unreadable_record_starts_afresh() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("dump-rates.json"), b"{torn").unwrap();
        assert_eq!(DumpRates::open(dir.path()).median("criu-runc"), None);
    }
}
