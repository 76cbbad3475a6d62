//! What podckptd keeps beside the checkpoints, removed once it is of no
//! use: the seals of checkpoints that are gone, and the restore tokens and
//! the restore-by-annotation sessions of sandboxes that are gone (restored,
//! never started, then removed; or the kubelet's pod, deleted). Run
//! when the daemon starts and in the background of each pod call, so that
//! nothing piles up on a node that checkpoints every few minutes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use tonic::Code;
use tracing::{info, warn};

use super::PodService;
use crate::api::cri;
use crate::interposer::token::{IssuedFor, RestoreToken};

/// How long a sandbox's own token may wait for its sandbox: far beyond any
/// RestorePod's deadline.
const SANDBOX_TOKEN_LIFE: std::time::Duration = std::time::Duration::from_secs(3600);

impl PodService {
    /// Prunes, in the background, unless a pruning is already under way.
    pub(super) fn tidy_in_background(&self) {
        if self.inner.tidying.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        self.inner.operations.spawn(async move {
            this.tidy().await;
            this.inner.tidying.store(false, Ordering::Release);
        });
    }

    async fn tidy(&self) {
        let seals = self.inner.seals.clone();
        match tokio::task::spawn_blocking(move || seals.prune()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => info!(removed, "removed the seals of checkpoints that are gone"),
            Ok(Err(error)) => warn!(%error, "could not prune seals"),
            Err(error) => warn!(%error, "seal pruning task failed"),
        }
        match self.prune_tokens().await {
            Ok(0) => {}
            Ok(removed) => info!(removed, "removed the restore tokens of sandboxes that are gone"),
            Err(error) => warn!(%error, "could not prune restore tokens"),
        }
        match self.prune_sessions().await {
            Ok(0) => {}
            Ok(removed) => info!(removed, "removed the restore sessions of sandboxes that are gone"),
            Err(error) => warn!(%error, "could not prune restore sessions"),
        }
    }

    /// Whether the runtime says sandbox `id` does not exist (an error that
    /// is not NOT_FOUND says nothing, and keeps what is kept for it).
    async fn sandbox_gone(&self, id: &str) -> bool {
        let request = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_owned(),
            verbose: false,
        };
        matches!(self.runtime().pod_sandbox_status(request).await, Err(s) if s.code() == Code::NotFound)
    }

    /// A session (`SANDBOX.json`) goes once its sandbox is gone; it is
    /// written after its sandbox was created.
    async fn prune_sessions(&self) -> Result<usize, crate::archive::ArchiveError> {
        let dir = self.inner.state_dir.join(super::restore::SESSIONS_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(crate::archive::ArchiveError::io(&dir)(e)),
        };
        let mut removed = 0;
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            let Some(sandbox) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            if self.sandbox_gone(sandbox).await && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// A token goes only when the runtime says its sandbox is NOT_FOUND. A
    /// token is written after its sandbox was created, so a restore under
    /// way never loses its own; a runtime that cannot answer removes nothing.
    async fn prune_tokens(&self) -> Result<usize, crate::archive::ArchiveError> {
        let dir = self.inner.state_dir.join(super::restore::TOKENS_DIR);
        let mut by_sandbox: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        let mut removed = 0;
        for (path, issued_for) in RestoreToken::list(&dir)? {
            match issued_for {
                IssuedFor::Sandbox(sandbox) => by_sandbox.entry(sandbox).or_default().push(path),
                // Its RestorePod uses or removes it within its deadline; one
                // this old outlived a daemon that died in between.
                IssuedFor::SandboxToBe => {
                    let stale = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().unwrap_or_default() > SANDBOX_TOKEN_LIFE);
                    if stale && std::fs::remove_file(&path).is_ok() {
                        removed += 1;
                    }
                }
                IssuedFor::Nothing => by_sandbox.entry(String::new()).or_default().push(path),
            }
        }
        for (sandbox, paths) in by_sandbox {
            let gone = sandbox.is_empty() || self.sandbox_gone(&sandbox).await;
            if gone {
                for path in paths {
                    if std::fs::remove_file(&path).is_ok() {
                        removed += 1;
                    }
                }
            }
        }
        Ok(removed)
    }
}
