//! A restored pod's PID namespace, kept clear of the PIDs its checkpoint
//! holds. CRIU gives every restored process its saved PID back; in a PID
//! namespace the pod's containers share (shareProcessNamespace, the CRI's
//! default), a PID that another process of the new pod took first (a
//! container restored or started earlier that forks, an init container, a
//! probe) fails the restore: "Can't fork for 51: File exists", seen here.
//!
//! So RestorePod, and restore by annotation, mark such a sandbox with the
//! highest PID the checkpoint holds, and on the sandbox's `create` this
//! wrapper sets the new namespace's last PID to it, after the runtime made
//! the namespace and before its first process runs: every process the pod
//! makes afterwards takes a PID above it, and CRIU's exact PIDs stay free.
//! A pod author who sets the annotation by hand only moves the PIDs of
//! their own new pod.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;

use nix::sched::CloneFlags;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::ForkResult;
use serde_json::Value;

use super::InterposerError;
use super::cli::{Create, Invocation};
use super::identity::SpecIdentity;

/// The sandbox annotation: the highest PID the pod's checkpoint holds.
/// containerd passes it on when the handler's `pod_annotations` take
/// `io.podckpt.*`; CRI-O passes every pod annotation.
pub const ANNOTATION: &str = "io.podckpt.pid-floor";

/// The floor a spec asks for: only a pod's sandbox (pause) container that
/// makes a PID namespace of its own, the one its containers will join.
pub fn requested(spec: &Value) -> Option<u32> {
    if !SpecIdentity::of(spec).is_sandbox {
        return None;
    }
    let new_pid_namespace = spec["linux"]["namespaces"]
        .as_array()?
        .iter()
        .any(|n| n["type"] == "pid" && n["path"].as_str().unwrap_or_default().is_empty());
    if !new_pid_namespace {
        return None;
    }
    spec["annotations"][ANNOTATION]
        .as_str()?
        .parse()
        .ok()
        .filter(|floor| *floor > 0)
}

/// The runtime's `create` of the sandbox, then the floor set in the PID
/// namespace it made. Until `start`, the namespace holds only the runtime's
/// waiting init, so nothing has taken a PID it should not. A floor that
/// cannot be set fails the `create`, and the sandbox is deleted: its
/// restores would fail later for a reason nobody could see.
pub fn create(
    runtime: &Path,
    args: &[OsString],
    inv: &Invocation,
    create: &Create,
    floor: u32,
) -> Result<(), InterposerError> {
    let status = Command::new(runtime)
        .args(args)
        .status()
        .map_err(|e| InterposerError::Io(format!("running {}: {e}", runtime.display())))?;
    if !status.success() {
        return Err(InterposerError::Runtime(status));
    }
    let raised = init_pid(runtime, inv, create).and_then(|pid| raise(pid, floor));
    if let Err(why) = raised {
        let _ = Command::new(runtime)
            .args(&inv.global)
            .args(["delete".as_ref(), "--force".as_ref(), create.id.as_os_str()])
            .status();
        return Err(InterposerError::Io(format!(
            "setting the restored pod's PID namespace above PID {floor}: {why}"
        )));
    }
    Ok(())
}

/// The sandbox init's host PID: from the pid file the runtime wrote.
fn init_pid(runtime: &Path, inv: &Invocation, create: &Create) -> Result<i32, String> {
    if let Some(file) = &create.pid_file {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", Path::new(file).display()))?;
        return text
            .trim()
            .parse()
            .map_err(|e| format!("{}: {e}", Path::new(file).display()));
    }
    let out = Command::new(runtime)
        .args(&inv.global)
        .arg("state")
        .arg(&create.id)
        .output()
        .map_err(|e| format!("{} state: {e}", runtime.display()))?;
    let state: Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("{} state: {e}", runtime.display()))?;
    state["pid"]
        .as_i64()
        .map(|pid| pid as i32)
        .ok_or_else(|| format!("{} state names no pid", runtime.display()))
}

/// Writes `floor` as the last PID of `pid`'s PID namespace. The sysctl
/// acts on the writer's own namespace, and `setns` moves only the children
/// made after it there: a child enters, and its child writes.
fn raise(pid: i32, floor: u32) -> Result<(), String> {
    let path = format!("/proc/{pid}/ns/pid");
    let namespace = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    // SAFETY: podckpt-runc has a single thread; the child only makes
    // system calls, writes one file and exits without unwinding.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            let code = enter_and_write(&namespace, floor);
            // SAFETY: leaves the forked child without running the parent's
            // exit handlers twice.
            unsafe { nix::libc::_exit(code) }
        }
        Ok(ForkResult::Parent { child }) => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            Ok(WaitStatus::Exited(_, code)) => Err(match code {
                2 => "cannot enter its PID namespace".into(),
                3 => "cannot write /proc/sys/kernel/ns_last_pid in it".into(),
                _ => format!("the helper failed ({})", std::process::ExitStatus::from_raw(code << 8)),
            }),
            other => Err(format!("the helper ended as {other:?}")),
        },
        Err(e) => Err(format!("fork: {e}")),
    }
}

fn enter_and_write(namespace: &std::fs::File, floor: u32) -> i32 {
    if nix::sched::setns(namespace, CloneFlags::CLONE_NEWPID).is_err() {
        return 2;
    }
    // SAFETY: as in `raise`; this process is that single-threaded child.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            let written = std::fs::write("/proc/sys/kernel/ns_last_pid", floor.to_string()).is_ok();
            // SAFETY: as above.
            unsafe { nix::libc::_exit(if written { 0 } else { 3 }) }
        }
        Ok(ForkResult::Parent { child }) => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => code,
            _ => 4,
        },
        Err(_) => 4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sandbox(namespaces: Value, floor: &str) -> Value {
        json!({
            "annotations": {"io.kubernetes.cri.container-type": "sandbox", ANNOTATION: floor},
            "linux": {"namespaces": namespaces},
        })
    }

    #[test]
    fn only_a_sandbox_that_makes_its_pid_namespace_gets_a_floor() {
        let own = json!([{"type": "pid"}, {"type": "network", "path": "/var/run/netns/x"}]);
        assert_eq!(requested(&sandbox(own.clone(), "364")), Some(364));
        // The node's PID namespace (hostPID): nothing of the pod's to keep clear.
        assert_eq!(requested(&sandbox(json!([{"type": "network"}]), "364")), None);
        assert_eq!(
            requested(&sandbox(json!([{"type": "pid", "path": "/proc/1/ns/pid"}]), "364")),
            None
        );
        assert_eq!(requested(&sandbox(own.clone(), "0")), None);
        assert_eq!(requested(&sandbox(own.clone(), "lots")), None);
        let mut container = sandbox(own, "364");
        container["annotations"]["io.kubernetes.cri.container-type"] = json!("container");
        assert_eq!(requested(&container), None);
    }
}
