//! What a container's OCI spec asks for that a checkpoint cannot carry:
//! read from the spec the runtime really runs, not from the pod's config,
//! so that whatever a runtime, a device plugin or a webhook added is seen.

use std::path::Path;

use serde_json::Value;

/// One feature found: one that stops the checkpoint, or (`blocking` false)
/// one that may, which the spec alone cannot tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The check's name, as the pre-flight answer reports it.
    pub check: &'static str,
    pub detail: String,
    pub blocking: bool,
}

/// How many paths a detail names before it says "and N more".
const LISTED: usize = 4;

/// What the spec's paths are on this node.
pub trait Node {
    /// Whether `path` is a Unix socket.
    fn is_socket(&self, path: &Path) -> bool;
    /// Whether the directory `path` holds a Unix socket (not looking deeper).
    fn holds_sockets(&self, path: &Path) -> bool;
    /// Whether the namespace file `path` (`/proc/PID/ns/KIND`) is the node's
    /// own namespace of that kind: a runtime may put a host-network container
    /// in "the pod's" namespace, which is the node's.
    fn is_node_namespace(&self, kind: &str, path: &Path) -> bool;
}

/// The node podckptd runs on, seen through /proc.
pub struct ThisNode;

impl Node for ThisNode {
    fn is_socket(&self, path: &Path) -> bool {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(path).is_ok_and(|m| m.file_type().is_socket())
    }

    fn holds_sockets(&self, path: &Path) -> bool {
        use std::os::unix::fs::FileTypeExt;
        let Ok(entries) = std::fs::read_dir(path) else {
            return false;
        };
        // A directory of a million files is not read whole for a hint.
        entries
            .take(4096)
            .filter_map(Result::ok)
            .any(|e| e.file_type().is_ok_and(|t| t.is_socket()))
    }

    fn is_node_namespace(&self, kind: &str, path: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let kind = match kind {
            "network" => "net",
            other => other,
        };
        // A namespace is the same when its nsfs file is: compared by device
        // and inode, which holds for /proc/PID/ns links and for the bind
        // mounts a runtime pins them with (/var/run/netns/...) alike. The
        // node's is init's, where it may be read, for podckptd could run in
        // namespaces of its own; else ours, which the unit leaves the node's.
        let id = |p: &Path| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
        let node =
            id(Path::new(&format!("/proc/1/ns/{kind}"))).or_else(|_| id(Path::new(&format!("/proc/self/ns/{kind}"))));
        match (id(path), node) {
            (Ok(theirs), Ok(node)) => theirs == node,
            _ => false,
        }
    }
}

/// Every feature of `spec` that the backend cannot carry, and (not
/// blocking) those it may not. A PID namespace the pod's containers share
/// is not one: a restore keeps the new pod's processes off the saved PIDs
/// (`interposer::pid_floor`), and what such a pod's containers would leave
/// out of a capture is a check of its own, on the running processes.
pub fn unsupported(spec: &Value, node: &impl Node) -> Vec<Finding> {
    let mut found = Vec::new();
    let mut note = |check, detail: String, blocking| {
        found.push(Finding {
            check,
            detail,
            blocking,
        })
    };
    let mut add = |check, detail: String| note(check, detail, true);
    let namespaces = spec["linux"]["namespaces"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    // None: no namespace of its own of that kind, so the node's; Some(path):
    // it joins the one at path; Some(""): a new one of its own.
    let joined = |kind: &str| {
        namespaces
            .iter()
            .find(|n| n["type"].as_str() == Some(kind))
            .map(|n| n["path"].as_str().unwrap_or_default())
    };
    let on_node = |kind: &str| match joined(kind) {
        None => true,
        Some("") => false,
        Some(path) => node.is_node_namespace(kind, Path::new(path)),
    };
    if on_node("network") {
        add(
            "host-network",
            "runs in the node's network namespace (hostNetwork): its sockets belong to the node, and a restore would bind the node's ports again".into(),
        );
    }
    if on_node("pid") {
        add(
            "host-pid",
            "runs in the node's PID namespace (hostPID): its processes' PIDs cannot be had again on restore".into(),
        );
    }
    let devices: Vec<&str> = spec["linux"]["devices"]
        .as_array()
        .map(|d| d.iter().filter_map(|d| d["path"].as_str()).collect())
        .unwrap_or_default();
    if !devices.is_empty() {
        add(
            "devices",
            format!(
                "has devices passed in ({}), whose state lives in the node's drivers and is not saved",
                listed(&devices)
            ),
        );
    }
    if let Some(why) = gpu(spec, &devices) {
        add(
            "gpu",
            format!("uses a GPU ({why}): its memory and driver state cannot be saved"),
        );
    }
    let binds: Vec<(&str, &str)> = spec["mounts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|m| is_bind(m))
        .filter_map(|m| Some((m["source"].as_str()?, m["destination"].as_str()?)))
        .collect();
    let mounted = |of: &dyn Fn(&Path) -> bool| -> Vec<String> {
        binds
            .iter()
            .filter(|(source, _)| of(Path::new(source)))
            .map(|(source, destination)| format!("{source} at {destination}"))
            .collect()
    };
    let sockets = mounted(&|p| node.is_socket(p));
    if !sockets.is_empty() {
        add(
            "socket-mount",
            format!(
                "has Unix sockets of the node bind-mounted ({}): a connection to a server outside the pod cannot be saved",
                listed(&sockets)
            ),
        );
    }
    let socket_dirs = mounted(&|p| p.is_dir() && node.holds_sockets(p));
    if spec["process"]["terminal"].as_bool() == Some(true) {
        add(
            "tty",
            "has a terminal (tty: true): its pseudo-terminal belongs to the runtime's shim and is not saved".into(),
        );
    }
    if !socket_dirs.is_empty() {
        note(
            "socket-mount",
            format!(
                "has directories of the node that hold Unix sockets bind-mounted ({}): a connection to one cannot be saved, and the spec cannot tell whether it has one",
                listed(&socket_dirs)
            ),
            false,
        );
    }
    found
}

fn is_bind(mount: &Value) -> bool {
    mount["type"].as_str() == Some("bind")
        || mount["options"]
            .as_array()
            .is_some_and(|o| o.iter().any(|o| matches!(o.as_str(), Some("bind" | "rbind"))))
}

/// Why the container looks like it has a GPU, naming no value: the device
/// nodes of NVIDIA, AMD and DRM drivers, the NVIDIA container toolkit's
/// environment, and CDI's annotations.
fn gpu(spec: &Value, devices: &[&str]) -> Option<String> {
    let gpu_node = |path: &str| {
        ["/dev/nvidia", "/dev/dri/", "/dev/kfd"]
            .iter()
            .any(|p| path.starts_with(p))
    };
    if let Some(device) = devices.iter().find(|d| gpu_node(d)) {
        return Some(format!("device {device}"));
    }
    let mounted = spec["mounts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m["source"].as_str())
        .find(|source| gpu_node(source));
    if let Some(source) = mounted {
        return Some(format!("{source} mounted"));
    }
    let visible = spec["process"]["env"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
        .filter_map(|e| e.strip_prefix("NVIDIA_VISIBLE_DEVICES="))
        .any(|value| !matches!(value, "" | "void" | "none"));
    if visible {
        return Some("NVIDIA_VISIBLE_DEVICES is set".into());
    }
    let cdi = spec["annotations"]
        .as_object()
        .and_then(|a| a.keys().find(|k| k.starts_with("cdi.k8s.io/")));
    cdi.map(|key| format!("CDI annotation {key}"))
}

fn listed(items: &[impl AsRef<str>]) -> String {
    let shown: Vec<&str> = items[..items.len().min(LISTED)].iter().map(AsRef::as_ref).collect();
    let shown = shown.join(", ");
    match items.len().saturating_sub(LISTED) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn plain() -> Value {
        json!({
            "process": {"terminal": false, "env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=void"]},
            "linux": {"namespaces": [
                {"type": "pid"}, {"type": "ipc", "path": "/proc/7/ns/ipc"},
                {"type": "uts", "path": "/proc/7/ns/uts"}, {"type": "mount"},
                {"type": "network", "path": "/var/run/netns/cni-1"}
            ]},
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/x/hosts", "options": ["rbind", "rprivate"]}
            ]
        })
    }

    /// A node whose containerd socket is a socket, and whose namespaces
    /// are those of PID 1.
    struct Fake;

    impl Node for Fake {
        fn is_socket(&self, path: &Path) -> bool {
            path.ends_with("containerd.sock")
        }

        fn holds_sockets(&self, path: &Path) -> bool {
            path == Path::new("/run/containerd")
        }

        fn is_node_namespace(&self, _kind: &str, path: &Path) -> bool {
            path.starts_with("/proc/1/")
        }
    }

    fn checks(spec: &Value) -> Vec<&'static str> {
        unsupported(spec, &Fake).into_iter().map(|u| u.check).collect()
    }

    #[test]
    fn a_plain_container_has_nothing_unsupported() {
        assert_eq!(checks(&plain()), Vec::<&str>::new());
    }

    #[test]
    fn each_feature_is_found_and_named() {
        let mut spec = plain();
        spec["linux"]["namespaces"] = json!([{"type": "pid", "path": "/proc/7/ns/pid"}, {"type": "mount"}]);
        spec["linux"]["devices"] = json!([{"path": "/dev/fuse"}, {"path": "/dev/nvidia0"}]);
        spec["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/run/c.sock", "source": "/run/containerd/containerd.sock", "options": ["bind"]}),
        );
        spec["process"]["terminal"] = json!(true);
        assert_eq!(checks(&spec), ["host-network", "devices", "gpu", "socket-mount", "tty"]);
        spec["linux"]["namespaces"] = json!([]);
        assert!(checks(&spec).contains(&"host-pid"));
        // containerd puts a host-network container in its pod's namespace,
        // which is the node's.
        spec["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "network", "path": "/proc/1/ns/net"}]);
        assert_eq!(checks(&spec), ["host-network", "devices", "gpu", "socket-mount", "tty"]);
    }

    #[test]
    fn a_gpu_is_seen_in_the_environment_and_annotations_without_their_values() {
        let mut spec = plain();
        spec["process"]["env"] = json!(["NVIDIA_VISIBLE_DEVICES=GPU-secret-uuid"]);
        let found = unsupported(&spec, &Fake);
        assert_eq!(found.len(), 1);
        assert!(!found[0].detail.contains("secret"), "{}", found[0].detail);
        let mut spec = plain();
        spec["annotations"] = json!({"cdi.k8s.io/gpu": "nvidia.com/gpu=0"});
        assert_eq!(checks(&spec), ["gpu"]);
    }

    #[test]
    fn a_directory_holding_sockets_is_a_hint_not_a_reason() {
        let mut spec = plain();
        spec["mounts"]
            .as_array_mut()
            .unwrap()
            .push(json!({"destination": "/host-run", "source": "/run/containerd", "options": ["rbind"]}));
        let found = unsupported(&spec, &Fake);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].check, found[0].blocking), ("socket-mount", false));
        assert!(
            found[0].detail.contains("/run/containerd at /host-run"),
            "{}",
            found[0].detail
        );
    }

    #[test]
    fn long_lists_are_cut_short() {
        let mut spec = plain();
        spec["linux"]["devices"] = json!(
            (0..7)
                .map(|n| json!({"path": format!("/dev/d{n}")}))
                .collect::<Vec<_>>()
        );
        let found = unsupported(&spec, &Fake);
        assert!(found[0].detail.contains("/dev/d3 and 3 more"), "{}", found[0].detail);
    }
}
