//! What a runtime's verbose PodSandboxStatus tells of a sandbox beyond the
//! CRI status, read the same way whichever runtime wrote it. containerd
//! reports the PodSandboxConfig it was given (`config`) and the handler in
//! the status; CRI-O reports only the sandbox's OCI spec (`runtimeSpec`),
//! whose annotations carry the rest, and leaves the status's handler empty.

use serde_json::{Value, json};

use crate::api::cri;

const CRIO: &str = "io.kubernetes.cri-o.";

/// The runtime's verbose info, parsed.
fn info(pod: &cri::PodSandboxStatusResponse) -> Value {
    pod.info
        .get("info")
        .and_then(|raw| serde_json::from_str(raw).ok())
        .unwrap_or(Value::Null)
}

fn crio_annotation<'a>(info: &'a Value, key: &str) -> Option<&'a str> {
    info["runtimeSpec"]["annotations"][format!("{CRIO}{key}")].as_str()
}

/// The runtime handler the sandbox runs with.
pub fn handler(pod: &cri::PodSandboxStatusResponse) -> String {
    match pod.status.as_ref().map(|s| s.runtime_handler.as_str()) {
        Some(handler) if !handler.is_empty() => handler.to_owned(),
        _ => crio_annotation(&info(pod), "RuntimeHandler")
            .unwrap_or_default()
            .to_owned(),
    }
}

/// The sandbox's config for `pod.dump`: the runtime's own copy where it
/// keeps one, else rebuilt from the status and the spec, in the same JSON
/// form (Go's encoding of the CRI message, as containerd writes it). `None`
/// when the runtime reported neither.
pub fn config(pod: &cri::PodSandboxStatusResponse) -> Option<Value> {
    let info = info(pod);
    if let Some(config) = info.get("config") {
        return Some(config.clone());
    }
    if !info["runtimeSpec"].is_object() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let metadata = status.metadata.as_ref();
    let options = status
        .linux
        .as_ref()
        .and_then(|l| l.namespaces.as_ref())
        .and_then(|n| n.options.as_ref());
    // CRI-O logs the sandbox into `<log_directory>/<id>.log`.
    let log_directory = crio_annotation(&info, "LogPath")
        .and_then(|path| std::path::Path::new(path).parent())
        .map(|dir| dir.display().to_string())
        .unwrap_or_default();
    let port_mappings: Value = crio_annotation(&info, "PortMappings")
        .and_then(|raw| serde_json::from_str(raw).ok())
        .unwrap_or(Value::Null);
    Some(json!({
        "metadata": {
            "name": metadata.map(|m| m.name.as_str()),
            "uid": metadata.map(|m| m.uid.as_str()),
            "namespace": metadata.map(|m| m.namespace.as_str()),
            "attempt": metadata.map_or(0, |m| m.attempt),
        },
        "hostname": info["runtimeSpec"]["hostname"],
        "log_directory": log_directory,
        "port_mappings": port_mappings,
        "labels": status.labels,
        "annotations": status.annotations,
        "linux": {
            "cgroup_parent": crio_annotation(&info, "CgroupParent").unwrap_or_default(),
            "security_context": {
                "namespace_options": {
                    "network": options.map_or(0, |o| o.network),
                    "pid": options.map_or(0, |o| o.pid),
                    "ipc": options.map_or(0, |o| o.ipc),
                },
            },
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What CRI-O 1.37 answered for a pod run with handler "podckpt".
    fn crio_pod() -> cri::PodSandboxStatusResponse {
        let spec = json!({"hostname": "web-0", "annotations": {
            "io.kubernetes.cri-o.RuntimeHandler": "podckpt",
            "io.kubernetes.cri-o.LogPath": "/var/log/pods/ns_web_u1/abc.log",
            "io.kubernetes.cri-o.CgroupParent": "",
            "io.kubernetes.cri-o.PortMappings": "[]",
        }});
        cri::PodSandboxStatusResponse {
            status: Some(cri::PodSandboxStatus {
                metadata: Some(cri::PodSandboxMetadata {
                    name: "web".into(),
                    uid: "u1".into(),
                    namespace: "ns".into(),
                    attempt: 0,
                }),
                labels: [("app".to_string(), "web".to_string())].into(),
                linux: Some(cri::LinuxPodSandboxStatus {
                    namespaces: Some(cri::Namespace {
                        options: Some(cri::NamespaceOption {
                            pid: cri::NamespaceMode::Container as i32,
                            ..Default::default()
                        }),
                    }),
                }),
                ..Default::default()
            }),
            info: [("info".to_string(), json!({"runtimeSpec": spec}).to_string())].into(),
            ..Default::default()
        }
    }

    #[test]
    fn crio_sandboxes_are_read_from_their_spec() {
        let pod = crio_pod();
        assert_eq!(handler(&pod), "podckpt");
        let config = config(&pod).unwrap();
        assert_eq!(config["metadata"]["uid"], "u1");
        assert_eq!(config["hostname"], "web-0");
        assert_eq!(config["log_directory"], "/var/log/pods/ns_web_u1");
        assert_eq!(config["labels"]["app"], "web");
        assert_eq!(config["linux"]["security_context"]["namespace_options"]["pid"], 1);
        // What `podckpt restorep` makes of it.
        let rebuilt = crate::cli::configs::pod_from_json(&config);
        assert_eq!(rebuilt.hostname, "web-0");
        assert_eq!(rebuilt.metadata.unwrap().namespace, "ns");
    }

    #[test]
    fn containerds_own_config_and_handler_win() {
        let mut pod = crio_pod();
        pod.status.as_mut().unwrap().runtime_handler = "runc".into();
        pod.info
            .insert("info".into(), json!({"config": {"hostname": "kept"}}).to_string());
        assert_eq!(handler(&pod), "runc");
        assert_eq!(config(&pod).unwrap()["hostname"], "kept");
        pod.info.clear();
        assert_eq!(config(&pod), None);
    }
}
