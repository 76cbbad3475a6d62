//! `podckpt checkpointp`.

use std::path::PathBuf;
use std::time::Instant;

use super::{CliError, Clients, Format, progress};
use crate::api::cri;
use crate::api::pod::CheckpointPodRequest;
use crate::api::podckpt::{DeleteRequest, PrepareRequest};

/// Where `checkpointp` writes.
pub(super) enum Target {
    /// A directory of the caller's, made if missing, or a new one here.
    Dir(Option<PathBuf>),
    /// By name, under podckptd's checkpoint root, in the pod's namespace.
    Named(String),
}

pub(super) async fn run(
    clients: &Clients,
    format: Format,
    pod: &str,
    target: Target,
    options: &[String],
    containers: Vec<String>,
) -> Result<(), CliError> {
    let pod = resolve_pod(clients, pod).await?;
    let options = super::parse_options(options)?;
    let containers = if containers.is_empty() {
        running_containers(clients, &pod).await?
    } else {
        containers
    };
    let (dir, named) = match target {
        Target::Dir(dir) => (prepare_dir(dir, &pod)?, None),
        Target::Named(name) => {
            let prepared = clients
                .checkpoints
                .clone()
                .prepare(clients.request(PrepareRequest {
                    pod_sandbox_id: pod.clone(),
                    name: name.clone(),
                    owner: String::new(),
                }))
                .await
                .map_err(CliError::call("Checkpoints/Prepare"))?
                .into_inner();
            (PathBuf::from(prepared.path), Some((prepared.namespace, name)))
        }
    };
    progress(
        format,
        format_args!("Checkpointing pod {} into {} ...", super::short(&pod), dir.display()),
    );
    let started = Instant::now();
    let request = CheckpointPodRequest {
        pod_sandbox_id: pod.clone(),
        output_path: dir.display().to_string(),
        container_ids: containers,
        options,
    };
    let checkpointed = clients
        .pods
        .clone()
        .checkpoint_pod(clients.request(request))
        .await
        .map_err(CliError::call("CheckpointPod"));
    if let (Err(_), Some((namespace, name))) = (&checkpointed, &named) {
        // CheckpointPod left the directory empty; the name is free again.
        let _ = clients
            .checkpoints
            .clone()
            .delete(clients.request(DeleteRequest {
                namespace: namespace.clone(),
                name: name.clone(),
            }))
            .await;
    }
    checkpointed?;
    let seconds = started.elapsed().as_secs_f64();
    let bytes = crate::archive::space::tree_size(&dir);
    let freeze_ms = super::inspect::freeze_ms(&dir);
    match format {
        Format::Json => {
            let mut report = serde_json::json!({"pod_sandbox_id": pod, "checkpoint": dir, "seconds": seconds, "bytes": bytes, "freeze_ms": freeze_ms});
            if let Some((namespace, name)) = &named {
                report["namespace"] = namespace.as_str().into();
                report["name"] = name.as_str().into();
            }
            println!("{report}")
        }
        Format::Table => {
            progress(
                format,
                format_args!(
                    "Checkpointed in {seconds:.2} s ({}); the pod was frozen for {}",
                    crate::archive::space::human(bytes),
                    freeze_ms.map_or("an unknown time".into(), |ms| format!("{ms} ms"))
                ),
            );
            println!("{}", dir.display());
        }
    }
    Ok(())
}

/// A full pod id from an id or a unique prefix of one.
pub(super) async fn resolve_pod(clients: &Clients, wanted: &str) -> Result<String, CliError> {
    let pods = clients
        .runtime
        .clone()
        .list_pod_sandbox(clients.request(cri::ListPodSandboxRequest { filter: None }))
        .await
        .map_err(CliError::call("ListPodSandbox"))?
        .into_inner()
        .items;
    let matches: Vec<&cri::PodSandbox> = pods.iter().filter(|p| p.id.starts_with(wanted)).collect();
    match matches.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(CliError::Usage(format!("no pod with ID {wanted}"))),
        _ => Err(CliError::Usage(format!(
            "{wanted} matches {} pods; give more of the ID",
            matches.len()
        ))),
    }
}

/// Every running container of `pod`: the call itself takes no empty list,
/// so the CLI's default of "the whole pod" is spelled out here.
async fn running_containers(clients: &Clients, pod: &str) -> Result<Vec<String>, CliError> {
    let filter = cri::ContainerFilter {
        pod_sandbox_id: pod.to_owned(),
        state: Some(cri::ContainerStateValue {
            state: cri::ContainerState::ContainerRunning as i32,
        }),
        ..Default::default()
    };
    let running: Vec<String> = clients
        .runtime
        .clone()
        .list_containers(clients.request(cri::ListContainersRequest { filter: Some(filter) }))
        .await
        .map_err(CliError::call("ListContainers"))?
        .into_inner()
        .containers
        .into_iter()
        .map(|c| c.id)
        .collect();
    if running.is_empty() {
        return Err(CliError::Usage(format!(
            "pod {pod} has no running container to checkpoint"
        )));
    }
    Ok(running)
}

/// Where a checkpoint of `pod` goes: `dir`, or a new `podckpt-POD-TIME` in
/// the current directory; absolute, symlinks resolved where it exists.
pub(super) fn target_dir(dir: Option<PathBuf>, pod: &str) -> Result<PathBuf, CliError> {
    let cwd = std::env::current_dir().map_err(CliError::io("."))?;
    let dir = dir.unwrap_or_else(|| {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        PathBuf::from(format!("podckpt-{}-{stamp}", &pod[..pod.len().min(12)]))
    });
    let dir = if dir.is_absolute() { dir } else { cwd.join(dir) };
    match dir.canonicalize() {
        Ok(resolved) => Ok(resolved),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(dir),
        Err(e) => Err(CliError::io(&dir)(e)),
    }
}

/// The output directory as an absolute path to an empty directory.
fn prepare_dir(dir: Option<PathBuf>, pod: &str) -> Result<PathBuf, CliError> {
    let dir = target_dir(dir, pod)?;
    std::fs::create_dir_all(&dir).map_err(CliError::io(&dir))?;
    let dir = dir.canonicalize().map_err(CliError::io(&dir))?;
    if std::fs::read_dir(&dir).map_err(CliError::io(&dir))?.next().is_some() {
        return Err(CliError::Usage(format!("{} is not empty", dir.display())));
    }
    Ok(dir)
}
