//! What of a running container CRIU would leave out. runc checkpoints a
//! container from its first process down. In a PID namespace of the
//! container's own, an orphaned process is adopted by that first process
//! and stays in the tree; in the pod's shared one (shareProcessNamespace,
//! the CRI's default) it is adopted by the pod's first process, the pause,
//! and the checkpoint silently goes without it (seen here: a `(sleep &)`
//! in such a container was missing from `pstree.img`, with the dump OK).
//!
//! Processes that the runtime started in the container from outside
//! (`exec`: probes, `kubectl exec`) are left out too, but they are
//! transient and their parent is the runtime's, not the pod's: they are
//! not reported.

use std::os::unix::fs::MetadataExt;

/// A process of the container that its checkpoint would not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftOut {
    /// Its PID on the node.
    pub pid: u32,
    /// Its command name.
    pub command: String,
}

impl std::fmt::Display for LeftOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PID {} ({})", self.pid, self.command)
    }
}

/// The node's processes, as far as this needs them.
pub trait Processes {
    fn pids(&self) -> Vec<u32>;
    fn parent(&self, pid: u32) -> Option<u32>;
    /// The inode of the process's namespace of `kind` (`mnt`, `pid`).
    fn namespace(&self, pid: u32, kind: &str) -> Option<u64>;
    fn command(&self, pid: u32) -> String;
}

/// The processes of the container whose first process is `init` (those in
/// its mount namespace) that descend neither from `init` nor from a process
/// the runtime started from outside the pod.
pub fn left_out(init: u32, processes: &impl Processes) -> Vec<LeftOut> {
    let (Some(mounts), Some(pod_pids)) = (processes.namespace(init, "mnt"), processes.namespace(init, "pid")) else {
        return Vec::new();
    };
    let in_container = |pid: u32| processes.namespace(pid, "mnt") == Some(mounts);
    let mut found = Vec::new();
    for pid in processes.pids() {
        if pid == init || !in_container(pid) {
            continue;
        }
        // Up the tree to `init` (captured) or to the first ancestor outside
        // the container: the pod's own (adopted: left out) or the runtime's.
        let mut ancestor = pid;
        let adopted_by_the_pod = loop {
            match processes.parent(ancestor) {
                Some(parent) if parent == init => break false,
                Some(parent) if parent != 0 && parent != ancestor && in_container(parent) => ancestor = parent,
                Some(parent) if parent != 0 => break processes.namespace(parent, "pid") == Some(pod_pids),
                _ => break false,
            }
        };
        if adopted_by_the_pod {
            found.push(LeftOut {
                pid,
                command: processes.command(pid),
            });
        }
    }
    found.sort_by_key(|p| p.pid);
    found
}

/// Why a container whose capture would go without the processes `missed`
/// is unfit: a restore would bring it back without them, and nobody would
/// be told.
pub fn left_out_reason(missed: &[LeftOut]) -> String {
    let listed: Vec<String> = missed.iter().take(4).map(ToString::to_string).collect();
    let more = match missed.len().saturating_sub(listed.len()) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    format!(
        "{}{more} left the tree of its first process: orphaned in the pod's shared PID namespace, the pod's first process adopted them, and a checkpoint saves a container from its first process down, so it would go without them; have the container wait for its children (or run an init such as tini as its first process), or give it a PID namespace of its own (no shareProcessNamespace)",
        listed.join(", ")
    )
}

/// The processes a capture holds: `init` and every descendant of it.
pub fn captured(init: u32, processes: &impl Processes) -> Vec<u32> {
    let Some(mounts) = processes.namespace(init, "mnt") else {
        return Vec::new();
    };
    processes
        .pids()
        .into_iter()
        .filter(|pid| processes.namespace(*pid, "mnt") == Some(mounts))
        .filter(|pid| {
            let mut at = *pid;
            for _ in 0..4096 {
                if at == init {
                    return true;
                }
                match processes.parent(at) {
                    Some(parent) if parent != 0 && parent != at => at = parent,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

/// The fields of /proc/PID/stat after the command: the state first, then
/// the parent's PID, and on.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command sits in parentheses and may hold anything: read after the last.
    Some(stat.rsplit_once(')')?.1.split_whitespace().map(str::to_owned).collect())
}

/// The node's /proc.
pub struct Proc;

impl Processes for Proc {
    fn pids(&self) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .collect()
    }

    fn parent(&self, pid: u32) -> Option<u32> {
        stat_fields(pid)?.get(1)?.parse().ok()
    }

    fn namespace(&self, pid: u32, kind: &str) -> Option<u64> {
        std::fs::metadata(format!("/proc/{pid}/ns/{kind}"))
            .ok()
            .map(|m| m.ino())
    }

    fn command(&self, pid: u32) -> String {
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim().to_owned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// A process: (parent, mount namespace, PID namespace, command).
    type Entry = (u32, u64, u64, &'static str);

    /// Processes by pid.
    struct Fake(BTreeMap<u32, Entry>);

    impl Processes for Fake {
        fn pids(&self) -> Vec<u32> {
            self.0.keys().copied().collect()
        }
        fn parent(&self, pid: u32) -> Option<u32> {
            self.0.get(&pid).map(|p| p.0)
        }
        fn namespace(&self, pid: u32, kind: &str) -> Option<u64> {
            self.0.get(&pid).map(|p| if kind == "mnt" { p.1 } else { p.2 })
        }
        fn command(&self, pid: u32) -> String {
            self.0.get(&pid).map(|p| p.3.to_owned()).unwrap_or_default()
        }
    }

    // The node: the shim (100) in the node's namespaces (1, 1); the pod's
    // pause (200) in mount namespace 20 and the pod's PID namespace 9; the
    // container (300) in mount namespace 30 and PID namespace 9.
    fn pod(extra: &[(u32, Entry)]) -> Fake {
        let mut all: BTreeMap<_, _> = [
            (1, (0, 1, 1, "init")),
            (100, (1, 1, 1, "containerd-shim")),
            (200, (100, 20, 9, "pause")),
            (300, (100, 30, 9, "sh")),
            (301, (300, 30, 9, "sleep")),
        ]
        .into();
        all.extend(extra.iter().copied());
        Fake(all)
    }

    #[test]
    fn an_orphan_adopted_by_the_pause_is_left_out() {
        let node = pod(&[(310, (200, 30, 9, "worker")), (311, (310, 30, 9, "child"))]);
        let found = left_out(300, &node);
        assert_eq!(
            found,
            vec![
                LeftOut {
                    pid: 310,
                    command: "worker".into()
                },
                LeftOut {
                    pid: 311,
                    command: "child".into()
                },
            ]
        );
        assert_eq!(found[0].to_string(), "PID 310 (worker)");
    }

    #[test]
    fn a_capture_holds_the_first_process_and_its_descendants() {
        let node = pod(&[
            (302, (301, 30, 9, "grandchild")),
            (320, (100, 30, 9, "exec")),
            (310, (200, 30, 9, "orphan")),
        ]);
        let mut held = captured(300, &node);
        held.sort();
        assert_eq!(held, [300, 301, 302]);
    }

    #[test]
    fn descendants_and_what_the_runtime_runs_in_it_are_not() {
        // An exec'd shell (the shim's child) and its child; another
        // container's process adopted by the pause.
        let node = pod(&[
            (320, (100, 30, 9, "sh")),
            (321, (320, 30, 9, "cat")),
            (400, (200, 40, 9, "other")),
            (302, (301, 30, 9, "grandchild")),
        ]);
        assert!(left_out(300, &node).is_empty());
        // A container gone meanwhile: nothing to say.
        assert!(left_out(999, &node).is_empty());
    }
}
