//! The new pod's configs for `restorep`: from crictl-style JSON, or rebuilt
//! from what the checkpoint recorded of the original pod and containers.

use std::collections::HashMap;

use serde_json::Value;

use crate::api::cri;
use crate::archive::ProcessRecord;

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

fn string_map(v: &Value) -> HashMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// The kubelet's choice for a pod without shareProcessNamespace: network
/// and IPC per pod, PID per container. CRIU restores PIDs as they were, which
/// a pod-wide PID namespace cannot promise.
fn namespaces(v: &Value) -> cri::NamespaceOption {
    let mode = |key: &str, default: cri::NamespaceMode| v[key].as_i64().map(|m| m as i32).unwrap_or(default as i32);
    cri::NamespaceOption {
        network: mode("network", cri::NamespaceMode::Pod),
        pid: mode("pid", cri::NamespaceMode::Container),
        ipc: mode("ipc", cri::NamespaceMode::Pod),
        ..Default::default()
    }
}

fn new_uid() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("podckpt-{nanos:x}")
}

/// A PodSandboxConfig from crictl's JSON (snake_case keys; the fields a
/// restored pod needs: metadata, hostname, log_directory, labels,
/// annotations, linux.cgroup_parent and namespace options).
pub fn pod_from_json(v: &Value) -> cri::PodSandboxConfig {
    let meta = &v["metadata"];
    let name = text(&meta["name"]);
    let namespace = meta["namespace"].as_str().unwrap_or("default").to_owned();
    let uid = meta["uid"].as_str().map(str::to_owned).unwrap_or_else(new_uid);
    let log_directory = v["log_directory"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| format!("/var/log/pods/{namespace}_{name}_{uid}"));
    cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.clone(),
            uid,
            namespace,
            attempt: 0,
        }),
        hostname: v["hostname"].as_str().map(str::to_owned).unwrap_or(name),
        log_directory,
        labels: string_map(&v["labels"]),
        annotations: string_map(&v["annotations"]),
        linux: Some(cri::LinuxPodSandboxConfig {
            cgroup_parent: text(&v["linux"]["cgroup_parent"]),
            security_context: Some(cri::LinuxSandboxSecurityContext {
                namespace_options: Some(namespaces(&v["linux"]["security_context"]["namespace_options"])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The original pod's config (from `pod.dump`) under a new name, uid and
/// log directory.
pub fn pod_from_checkpoint(pod_dump: &Value, name: &str) -> cri::PodSandboxConfig {
    let mut renamed = pod_dump.clone();
    renamed["metadata"]["name"] = Value::from(name);
    renamed["metadata"]["uid"] = Value::Null;
    renamed["hostname"] = Value::from(name);
    renamed["log_directory"] = Value::Null;
    pod_from_json(&renamed)
}

/// A ContainerConfig rebuilt from the checkpoint: the process it describes
/// (image, command, args, working directory, environment, credentials) as
/// its record has it, which RestorePod insists on, and the restore-time
/// settings (mounts, labels, annotations, log file, namespaces, tty) from
/// status.dump and spec.dump. Without a record (a checkpoint too old to be
/// restored) the process fields stay empty and RestorePod says why.
pub fn container_from_checkpoint(
    status: &cri::ContainerStatus,
    spec: &Value,
    record: Option<&ProcessRecord>,
) -> cri::ContainerConfig {
    let shared_pid = spec["linux"]["namespaces"]
        .as_array()
        .is_some_and(|ns| ns.iter().any(|n| n["type"] == "pid" && n["path"].is_string()));
    let mut namespace_options = namespaces(&Value::Null);
    if shared_pid {
        namespace_options.pid = cri::NamespaceMode::Pod as i32;
    }
    let log_path = std::path::Path::new(&status.log_path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut config = cri::ContainerConfig {
        metadata: status.metadata.clone().map(|m| cri::ContainerMetadata {
            name: m.name,
            attempt: 0,
        }),
        // The name as the user gave it, too: a runtime that verifies
        // signatures (CRI-O under a policy) asks for it.
        image: record
            .map(|r| r.image.clone())
            .or_else(|| status.image.as_ref().map(|i| i.image.clone()))
            .map(|image| cri::ImageSpec {
                user_specified_image: image.clone(),
                image,
                ..Default::default()
            }),
        mounts: status.mounts.clone(),
        labels: status.labels.clone(),
        annotations: status
            .annotations
            .iter()
            .filter(|(k, _)| !k.starts_with("io.podckpt."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        log_path,
        tty: spec["process"]["terminal"].as_bool().unwrap_or(false),
        linux: Some(cri::LinuxContainerConfig {
            security_context: Some(cri::LinuxContainerSecurityContext {
                namespace_options: Some(namespace_options),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    if let Some(record) = record {
        record.apply_to(&mut config);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::record::{Credentials, ExpectedProcess};
    use serde_json::json;

    #[test]
    fn crictl_json_and_defaults() {
        let pod = pod_from_json(
            &json!({"metadata": {"name": "web", "namespace": "prod", "uid": "u1"}, "labels": {"app": "web"}}),
        );
        assert_eq!(pod.metadata.as_ref().unwrap().name, "web");
        assert_eq!(pod.hostname, "web");
        assert_eq!(pod.log_directory, "/var/log/pods/prod_web_u1");
        assert_eq!(pod.labels["app"], "web");
        let ns = pod.linux.unwrap().security_context.unwrap().namespace_options.unwrap();
        assert_eq!(ns.pid, cri::NamespaceMode::Container as i32);
    }

    #[test]
    fn a_checkpointed_pod_gets_a_new_identity() {
        let dump = json!({"metadata": {"name": "old", "namespace": "ns", "uid": "old-uid"}, "log_directory": "/old", "hostname": "old"});
        let pod = pod_from_checkpoint(&dump, "new");
        let meta = pod.metadata.unwrap();
        assert_eq!((meta.name.as_str(), meta.namespace.as_str()), ("new", "ns"));
        assert_ne!(meta.uid, "old-uid");
        assert_eq!(pod.hostname, "new");
        assert!(pod.log_directory.starts_with("/var/log/pods/ns_new_"));
    }

    #[test]
    fn container_config_from_status_and_spec() {
        let status = cri::ContainerStatus {
            metadata: Some(cri::ContainerMetadata {
                name: "c".into(),
                attempt: 3,
            }),
            image: Some(cri::ImageSpec {
                image: "img".into(),
                ..Default::default()
            }),
            log_path: "/var/log/pods/x/c.log".into(),
            annotations: [
                ("io.podckpt.restore".to_string(), "/t".to_string()),
                ("a".to_string(), "b".to_string()),
            ]
            .into(),
            ..Default::default()
        };
        // The spec's process mixes in the image's environment and what the
        // runtime added, and joins command and args: the record is what counts.
        let spec = json!({"process": {"args": ["/bin/sh", "-c", "x", "arg"], "env": ["PATH=/bin", "HOSTNAME=h", "A=b=c"], "cwd": "/w", "terminal": true}});
        let record = ProcessRecord {
            image: "img:tag".into(),
            image_id: "sha256:1".into(),
            process: Some(ExpectedProcess {
                command: vec!["/bin/sh".into(), "-c".into(), "x".into()],
                args: vec!["arg".into()],
                working_dir: "/w".into(),
                envs: [("A".to_string(), "b=c".to_string())].into(),
                credentials: Credentials {
                    run_as_user: Some(0),
                    ..Default::default()
                },
            }),
            spec_process: None,
        };
        let c = container_from_checkpoint(&status, &spec, Some(&record));
        assert_eq!(
            c.metadata.as_ref().unwrap(),
            &cri::ContainerMetadata {
                name: "c".into(),
                attempt: 0
            }
        );
        assert_eq!(ExpectedProcess::from(&c), record.process.clone().unwrap());
        assert_eq!(c.image.as_ref().unwrap().image, "img:tag");
        assert_eq!(c.log_path, "c.log");
        assert_eq!(c.annotations.len(), 1);
        assert!(c.tty);
        let namespaces = c.linux.unwrap().security_context.unwrap().namespace_options.unwrap();
        assert_eq!(namespaces.pid, cri::NamespaceMode::Container as i32);

        let without = container_from_checkpoint(&status, &spec, None);
        assert_eq!(without.image.unwrap().image, "img");
        assert!(without.command.is_empty());
    }
}
