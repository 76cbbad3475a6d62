//! Freezing a pod's containers through their cgroup freezers directly, all
//! at once, instead of one `runc pause` after another.
//!
//! Why: each `runc pause` or `runc resume` is a Go program's start, 10 to
//! 20 ms here, spent inside the pod's freeze window, and one after another
//! they freeze a pod's containers at different instants. runc's pause is
//! itself only a write to the container's freezer: the freezer is the whole
//! of its "paused" state (runc and crun read it back from there), so a
//! container frozen here is paused as far as `runc checkpoint`, `runc state`
//! and `runc resume` can tell, and CRIU finds its cgroup frozen and leaves
//! it frozen.
//!
//! Every container's freezer is asked first, and only then is each waited
//! on, so the pod stops within a millisecond or so. A freezer that is not
//! found, cannot be written, or does not settle in time is given back
//! (everything frozen here is thawed) and the caller falls back to the
//! runtime's own pause, which has its own ways with a stubborn freezer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

/// How long the freezers may take to settle before the runtime's own pause
/// is used instead. Freezing a container takes well under a millisecond
/// unless a task is stuck in the kernel (a vfork, an uninterruptible sleep).
pub const SETTLE_LIMIT: Duration = Duration::from_secs(1);

const POLL: Duration = Duration::from_millis(1);

/// Where cgroup file systems are mounted.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// One container's freezer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Freezer {
    /// cgroup v1: `freezer.state` in the freezer hierarchy.
    V1(PathBuf),
    /// cgroup v2: `cgroup.freeze`, settled when `cgroup.events` says so.
    V2(PathBuf),
}

impl Freezer {
    /// The freezer of the cgroup process `pid` is in, from
    /// `/proc/PID/cgroup`: the v1 freezer hierarchy's where there is one
    /// (a hybrid host freezes there, as runc does), else the unified one.
    pub fn of(pid: u32) -> Option<Freezer> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        Self::from_proc(&text, Path::new(CGROUP_ROOT))
    }

    fn from_proc(text: &str, root: &Path) -> Option<Freezer> {
        let mut unified = None;
        for line in text.lines() {
            let mut fields = line.splitn(3, ':');
            let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            // A cgroup outside this reader's cgroup namespace shows as
            // `/../..`: not one to write to.
            if Path::new(path)
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            {
                return None;
            }
            let relative = path.trim_start_matches('/');
            if controllers.split(',').any(|c| c == "freezer") {
                return Some(Freezer::V1(root.join("freezer").join(relative)));
            }
            if controllers.is_empty() {
                unified = Some(root.join(relative));
            }
        }
        // On a v1 host without a freezer hierarchy the "0::" line names the
        // systemd-only unified mount, which has no freezer: nothing to use.
        unified
            .filter(|dir| dir.join("cgroup.freeze").exists())
            .map(Freezer::V2)
    }

    fn request(&self, frozen: bool) -> std::io::Result<()> {
        match self {
            Freezer::V1(dir) => std::fs::write(dir.join("freezer.state"), if frozen { "FROZEN" } else { "THAWED" }),
            Freezer::V2(dir) => std::fs::write(dir.join("cgroup.freeze"), if frozen { "1" } else { "0" }),
        }
    }

    fn is_frozen(&self) -> std::io::Result<bool> {
        Ok(match self {
            Freezer::V1(dir) => std::fs::read_to_string(dir.join("freezer.state"))?.trim() == "FROZEN",
            Freezer::V2(dir) => std::fs::read_to_string(dir.join("cgroup.events"))?
                .lines()
                .any(|l| l.trim() == "frozen 1"),
        })
    }

    pub fn thaw(&self) -> std::io::Result<()> {
        self.request(false)
    }

    fn path(&self) -> &Path {
        match self {
            Freezer::V1(dir) | Freezer::V2(dir) => dir,
        }
    }
}

/// Why the freezers could not freeze the pod (every one was thawed again).
#[derive(Debug, thiserror::Error)]
pub enum FreezeError {
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} did not freeze within {limit:?}")]
    Unsettled { path: PathBuf, limit: Duration },
}

/// Freezes every one of `freezers`, or none: asks them all, then waits up
/// to `limit` for each to settle. On any failure all of them are thawed
/// again.
pub async fn freeze_all(freezers: &[Freezer], limit: Duration) -> Result<(), FreezeError> {
    let outcome = async {
        for freezer in freezers {
            freezer.request(true).map_err(|source| FreezeError::Write {
                path: freezer.path().to_owned(),
                source,
            })?;
        }
        let deadline = Instant::now() + limit;
        for freezer in freezers {
            loop {
                let frozen = freezer.is_frozen().map_err(|source| FreezeError::Read {
                    path: freezer.path().to_owned(),
                    source,
                })?;
                if frozen {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(FreezeError::Unsettled {
                        path: freezer.path().to_owned(),
                        limit,
                    });
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }
    .await;
    if outcome.is_err() {
        for freezer in freezers {
            if let Err(error) = freezer.thaw() {
                tracing::warn!(cgroup = %freezer.path().display(), %error, "could not thaw a freezer after a failed freeze");
            }
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hybrid_host_freezes_in_the_v1_freezer_hierarchy() {
        let root = Path::new("/sys/fs/cgroup");
        let text = "10:hugetlb:/\n6:freezer:/k8s.io/abc\n4:memory:/k8s.io/abc\n1:cpu,cpuacct:/k8s.io/abc\n0::/\n";
        assert_eq!(
            Freezer::from_proc(text, root),
            Some(Freezer::V1(PathBuf::from("/sys/fs/cgroup/freezer/k8s.io/abc")))
        );
        assert_eq!(Freezer::from_proc("6:freezer:/../../other\n", root), None);
    }

    #[test]
    fn a_v2_host_freezes_in_the_unified_hierarchy_when_it_has_a_freezer() {
        let root = tempfile::tempdir().unwrap();
        let cgroup = root.path().join("kubepods/pod1/ctr");
        std::fs::create_dir_all(&cgroup).unwrap();
        let text = "0::/kubepods/pod1/ctr\n";
        assert_eq!(
            Freezer::from_proc(text, root.path()),
            None,
            "no cgroup.freeze: no freezer"
        );
        std::fs::write(cgroup.join("cgroup.freeze"), "0").unwrap();
        assert_eq!(Freezer::from_proc(text, root.path()), Some(Freezer::V2(cgroup)));
    }

    /// A v2 freezer in a plain directory: its events say what the test wants.
    fn fake_v2(dir: &Path, name: &str, events: &str) -> Freezer {
        let path = dir.join(name);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("cgroup.events"), events).unwrap();
        Freezer::V2(path)
    }

    #[tokio::test]
    async fn a_freezer_that_cannot_be_written_thaws_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let good = fake_v2(dir.path(), "good", "populated 1\nfrozen 1\n");
        let gone = Freezer::V1(dir.path().join("gone"));
        let err = freeze_all(&[good.clone(), gone], SETTLE_LIMIT).await.unwrap_err();
        assert!(matches!(err, FreezeError::Write { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(good.path().join("cgroup.freeze")).unwrap(), "0");
    }

    #[tokio::test]
    async fn a_freezer_that_never_settles_is_reported_and_every_one_thawed() {
        // As a task stuck in the kernel leaves a cgroup: asked, never frozen.
        let dir = tempfile::tempdir().unwrap();
        let good = fake_v2(dir.path(), "good", "frozen 1\n");
        let stuck = fake_v2(dir.path(), "stuck", "frozen 0\n");
        let err = freeze_all(&[good.clone(), stuck.clone()], Duration::from_millis(30))
            .await
            .unwrap_err();
        assert!(matches!(err, FreezeError::Unsettled { .. }), "{err}");
        for freezer in [good, stuck] {
            assert_eq!(
                std::fs::read_to_string(freezer.path().join("cgroup.freeze")).unwrap(),
                "0"
            );
        }
    }

    #[tokio::test]
    async fn settled_freezers_are_left_frozen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            fake_v2(dir.path(), "a", "frozen 1\n"),
            fake_v2(dir.path(), "b", "frozen 1\n"),
        );
        freeze_all(&[a.clone(), b.clone()], SETTLE_LIMIT).await.unwrap();
        for freezer in [a, b] {
            assert_eq!(
                std::fs::read_to_string(freezer.path().join("cgroup.freeze")).unwrap(),
                "1"
            );
        }
    }
}
