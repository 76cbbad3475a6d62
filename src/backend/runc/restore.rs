//! CRIU's restore through the OCI runtime: the writable layer back on the
//! new rootfs, then `RUNTIME restore --detach` with the same global flags,
//! bundle, pid file and console the shim gave `create`, eagerly or with
//! CRIU's lazy-pages daemon under a supervisor.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use super::OciRuntimeCheckpointer;
use super::lazy;
use crate::archive::{self, rootfs_diff};
use crate::backend::{RestoreError, RestoreRequest, Restored};

impl OciRuntimeCheckpointer {
    pub(super) fn restore_container(&self, request: &RestoreRequest<'_>) -> Result<Restored, RestoreError> {
        rootfs_diff::apply(
            request.rootfs,
            &request.checkpoint.join(archive::ROOTFS_DIFF),
            &request.checkpoint.join(archive::DELETED_FILES),
        )?;
        let work = request.bundle.join(super::RESTORE_WORK_DIR);
        std::fs::create_dir_all(&work).map_err(|e| RestoreError::Io(format!("{}: {e}", work.display())))?;
        let images = request.checkpoint.join(archive::CHECKPOINT_DIR);
        let runtime = self.binary();

        let mut cmd = Command::new(runtime);
        cmd.args(request.global)
            .arg("restore")
            .arg("--detach")
            .arg("--bundle")
            .arg(request.bundle)
            .arg("--image-path")
            .arg(&images)
            .arg("--work-path")
            .arg(&work);
        let supervisor = if request.lazy_pages {
            cmd.arg("--lazy-pages");
            Some(lazy::Supervisor::start(&lazy::Plan {
                images,
                work: work.clone(),
                runtime: runtime.to_owned(),
                global: request.global.to_vec(),
                id: request.id.to_owned(),
            })?)
        } else {
            None
        };
        if let Some(pid_file) = request.pid_file {
            cmd.arg("--pid-file").arg(pid_file);
        }
        if let Some(console) = request.console_socket {
            cmd.arg("--console-socket").arg(console);
        }
        if request.no_pivot {
            cmd.arg("--no-pivot");
        }
        cmd.arg(request.id);
        // stdio is inherited: runc re-attaches the restored process to the
        // pipes the shim handed us, as recorded in descriptors.json.
        let started = std::time::Instant::now();
        let status = cmd
            .status()
            .map_err(|e| RestoreError::Io(format!("running {}: {e}", runtime.display())));
        let engine_seconds = started.elapsed().as_secs_f64();
        let status = match (status, supervisor) {
            (Ok(status), Some(supervisor)) if status.success() => {
                supervisor.hand_over(self.init_pid(request)?)?;
                status
            }
            (status, Some(supervisor)) => {
                supervisor.abort();
                status?
            }
            (status, None) => status?,
        };
        if !status.success() {
            // CRIU's own account is what an operator needs, and containerd
            // deletes the bundle, this log with it, once the create has failed.
            let log = std::fs::read_to_string(work.join("restore.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(12).collect();
            for line in tail.iter().rev() {
                eprintln!("criu: {line}");
            }
            return Err(RestoreError::Failed {
                runtime: runtime.to_owned(),
                status,
                why: super::criu_log::last_errors(&log),
            });
        }
        Ok(Restored { engine_seconds })
    }

    /// The restored init's host pid: from the pid file the shim asked for,
    /// or from the runtime's state.
    fn init_pid(&self, request: &RestoreRequest<'_>) -> Result<i32, RestoreError> {
        if let Some(pid_file) = request.pid_file {
            return lazy::read_pid(Path::new(pid_file));
        }
        let runtime = self.binary();
        let out = Command::new(runtime)
            .args(request.global)
            .arg("state")
            .arg(request.id)
            .output()
            .map_err(|e| RestoreError::Io(format!("running {} state: {e}", runtime.display())))?;
        let state: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| RestoreError::Io(format!("{} state: {e}", runtime.display())))?;
        state["pid"]
            .as_i64()
            .map(|pid| pid as i32)
            .ok_or_else(|| RestoreError::Io(format!("{} state has no pid", runtime.display())))
    }
}

/// The runtime's checkpoint leaves every bind mount of the container to be
/// provided again (CRIU's external mounts, keyed by where they were
/// mounted), and the restore fails without a word of which one when the
/// new container has no bind mount there. Runtimes differ here: containerd
/// adds /etc/hosts, CRI-O /run/.containerenv.
pub(super) fn check_mounts(checkpoint: &Path, spec: &Value) -> Result<(), RestoreError> {
    let path = checkpoint.join(archive::SPEC_DUMP);
    let Ok(bytes) = std::fs::read(&path) else {
        return Ok(()); // verified already; a backend without a spec has nothing to check
    };
    let old: Value =
        serde_json::from_slice(&bytes).map_err(|e| RestoreError::Io(format!("{}: {e}", path.display())))?;
    let binds = |spec: &Value| -> Vec<String> {
        spec["mounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| {
                m["type"] == "bind"
                    || m["options"]
                        .as_array()
                        .is_some_and(|o| o.iter().any(|o| o == "bind" || o == "rbind"))
            })
            .filter_map(|m| m["destination"].as_str().map(str::to_owned))
            .collect()
    };
    let new = binds(spec);
    let missing: Vec<String> = binds(&old).into_iter().filter(|d| !new.contains(d)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(RestoreError::Mismatch(format!(
        "the checkpointed container had bind mounts at {missing:?} that the new one lacks; add a mount at each to its config (a checkpoint from another runtime may need one the runtime here does not add)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bind_mount_of_the_checkpoint_needs_one_in_the_new_container() {
        let dir = tempfile::tempdir().unwrap();
        let mount = |dest: &str, kind: &str, options: &[&str]| serde_json::json!({"destination": dest, "type": kind, "source": "/x", "options": options});
        let old = serde_json::json!({"mounts": [
            mount("/proc", "proc", &[]),
            mount("/etc/hosts", "bind", &["rbind", "rprivate"]),
            mount("/dev/shm", "none", &["bind"]),
        ]});
        std::fs::write(dir.path().join(archive::SPEC_DUMP), old.to_string()).unwrap();
        let same = serde_json::json!({"mounts": [mount("/dev/shm", "bind", &[]), mount("/etc/hosts", "bind", &[]), mount("/run/.containerenv", "bind", &[])]});
        check_mounts(dir.path(), &same).expect("extra mounts in the new container do no harm");
        let lacking = serde_json::json!({"mounts": [mount("/dev/shm", "bind", &[])]});
        let err = check_mounts(dir.path(), &lacking).unwrap_err().to_string();
        assert!(err.contains(r#"["/etc/hosts"]"#), "{err}");
    }
}
