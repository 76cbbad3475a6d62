//! `podckpt restorep`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use prost::Message;
use serde_json::Value;

use super::inspect::read_json;
use super::{CliError, Clients, Format, configs, progress};
use crate::api::cri;
use crate::api::pod::RestorePodRequest;
use crate::archive::{self, PodOptions, ProcessRecord};

#[allow(clippy::too_many_arguments)]
pub(super) async fn run(
    clients: &Clients,
    format: Format,
    dir: &Path,
    config: Option<PathBuf>,
    name: Option<String>,
    runtime_handler: String,
    start: bool,
) -> Result<(), CliError> {
    warn_if_a_kubelet_runs();
    let dir = dir.canonicalize().map_err(CliError::io(dir))?;
    let options: PodOptions = read_json(&dir.join(archive::POD_OPTIONS))?;
    let pod_config = match (config, name) {
        (Some(file), _) => configs::pod_from_json(&read_json::<Value>(&file)?),
        (None, Some(name)) => configs::pod_from_checkpoint(&read_json(&dir.join(archive::POD_DUMP))?, &name),
        (None, None) => return Err(CliError::Usage("give --config POD.json or --name NAME".into())),
    };
    // The kubelet makes the pod's log directory; here we do.
    std::fs::create_dir_all(&pod_config.log_directory).map_err(CliError::io(&pod_config.log_directory))?;
    let mut container_configs = Vec::new();
    for folder in options.containers.values() {
        let folder = dir.join(folder);
        let status: cri::ContainerStatus = read_json(&folder.join(archive::STATUS_DUMP))?;
        let spec: Value = read_json(&folder.join(archive::SPEC_DUMP))?;
        // Older checkpoints have none; podckptd explains why it refuses them.
        let record_path = folder.join(archive::PROCESS_RECORD);
        let record: Option<ProcessRecord> = record_path.exists().then(|| read_json(&record_path)).transpose()?;
        container_configs.push(configs::container_from_checkpoint(&status, &spec, record.as_ref()).encode_to_vec());
    }

    progress(
        format,
        format_args!(
            "Restoring {} container(s) from {} ...",
            container_configs.len(),
            dir.display()
        ),
    );
    let started = Instant::now();
    let request = RestorePodRequest {
        checkpoint_path: dir.display().to_string(),
        config: pod_config.encode_to_vec(),
        runtime_handler,
        options: Default::default(),
        container_configs,
    };
    let restored = clients
        .pods
        .clone()
        .restore_pod(clients.request(request))
        .await
        .map_err(CliError::call("RestorePod"))?
        .into_inner();
    let restore_seconds = started.elapsed().as_secs_f64();
    progress(
        format,
        format_args!("Pod {} created in {restore_seconds:.2} s", restored.pod_sandbox_id),
    );

    let mut start_seconds = None;
    if start {
        let began = Instant::now();
        for container in &restored.restored_containers {
            let request = cri::StartContainerRequest {
                container_id: container.container_id.clone(),
            };
            clients
                .runtime
                .clone()
                .start_container(clients.request(request))
                .await
                .map_err(CliError::call("StartContainer"))?;
        }
        let seconds = began.elapsed().as_secs_f64();
        progress(
            format,
            format_args!("Started in {seconds:.2} s: the processes go on from their checkpoint"),
        );
        start_seconds = Some(seconds);
    }
    match format {
        Format::Json => {
            let containers: Vec<Value> = restored
                .restored_containers
                .iter()
                .map(|c| serde_json::json!({"name": c.name, "container_id": c.container_id}))
                .collect();
            println!(
                "{}",
                serde_json::json!({
                    "pod_sandbox_id": restored.pod_sandbox_id,
                    "containers": containers,
                    "restore_seconds": restore_seconds,
                    "start_seconds": start_seconds,
                })
            );
        }
        Format::Table => {
            println!("POD ID {}", restored.pod_sandbox_id);
            for c in &restored.restored_containers {
                println!("{:<20} {}", c.name, c.container_id);
            }
        }
    }
    Ok(())
}

/// A kubelet removes, within its 2-second housekeeping, every sandbox whose
/// pod it did not create ("Clean up containers for orphaned pod we had not
/// seen before"), so a pod that RestorePod makes beside one does not live.
/// Said on stderr whatever the output format, since it is not the output.
fn warn_if_a_kubelet_runs() {
    if let Some(pid) = running("kubelet") {
        eprintln!(
            "warning: a kubelet runs on this node (pid {pid}); it removes within seconds every pod it did not create itself, as this one will be. For a pod the kubelet keeps, let the kubelet create it with the annotation podckpt.io/restore-from: NAME (checkpoint it with `podckpt checkpointp --name NAME`)"
        );
    }
}

/// The pid of a process of this node whose command name is `name`.
fn running(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == name))
}
