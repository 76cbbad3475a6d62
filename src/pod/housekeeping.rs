//! What podckptd keeps beside the checkpoints, removed once it is of no
//! use: the seals of checkpoints that are gone, and the restore tokens of
//! sandboxes that are gone (restored, never started, then removed). Run
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
    }

    /// A token goes only when the runtime says its sandbox is NOT_FOUND. A
    /// token is written after its sandbox was created, so a restore under
    /// way never loses its own; a runtime that cannot answer removes nothing.
    async fn prune_tokens(&self) -> Result<usize, crate::archive::ArchiveError> {
        let dir = self.inner.state_dir.join("restores");
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
            let gone = sandbox.is_empty() || {
                let request = cri::PodSandboxStatusRequest {
                    pod_sandbox_id: sandbox.clone(),
                    verbose: false,
                };
                matches!(self.runtime().pod_sandbox_status(request).await, Err(s) if s.code() == Code::NotFound)
            };
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
