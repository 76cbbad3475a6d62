//! `podckpt preflight`: whether a pod can be checkpointed now, and every
//! reason why not, from podckptd's pre-flight check. Nothing is paused.

use std::path::PathBuf;

use serde_json::json;

use super::{CliError, Clients, Format, short};
use crate::api::podckpt::{CheckPodRequest, CheckPodResponse, Verdict};
use crate::archive::space::human;

pub(super) async fn run(
    clients: &Clients,
    format: Format,
    pod: &str,
    dir: Option<PathBuf>,
    options: &[String],
    containers: Vec<String>,
) -> Result<(), CliError> {
    let options = super::parse_options(options)?;
    let pod = super::checkpoint::resolve_pod(clients, pod).await?;
    // Where `podckpt checkpointp` would write, with the same --output-dir.
    let dir = super::checkpoint::target_dir(dir, &pod)?;
    let request = CheckPodRequest {
        pod_sandbox_id: pod.clone(),
        container_ids: containers,
        output_path: dir.display().to_string(),
        // The deadline `podckpt checkpointp` would give, with the same --timeout.
        deadline_seconds: clients.timeout.as_secs(),
        options,
    };
    let answer = clients
        .preflight
        .clone()
        .check_pod(clients.request(request))
        .await
        .map_err(CliError::call("CheckPod"))?
        .into_inner();
    match format {
        Format::Json => println!("{}", as_json(&pod, &answer)),
        Format::Table => print_table(&pod, &answer),
    }
    if answer.checkpointable {
        return Ok(());
    }
    let failed = answer
        .checks
        .iter()
        .filter(|c| c.verdict == Verdict::Fail as i32)
        .count();
    Err(CliError::NotCheckpointable(format!(
        "pod {} cannot be checkpointed: {failed} check{} failed",
        short(&pod),
        if failed == 1 { "" } else { "s" }
    )))
}

fn verdict(check: i32) -> &'static str {
    match Verdict::try_from(check) {
        Ok(Verdict::Pass) => "pass",
        Ok(Verdict::Fail) => "FAIL",
        Ok(Verdict::Skipped) => "skipped",
        Err(_) => "unknown",
    }
}

fn as_json(pod: &str, answer: &CheckPodResponse) -> serde_json::Value {
    let checks: Vec<_> = answer
        .checks
        .iter()
        .map(|c| {
            json!({
                "check": c.name,
                "container_id": c.container_id,
                "verdict": verdict(c.verdict).to_lowercase(),
                "detail": c.detail,
            })
        })
        .collect();
    json!({
        "pod_sandbox_id": pod,
        "checkpointable": answer.checkpointable,
        "backend": answer.backend,
        "engine_version": answer.engine_version,
        "container_ids": answer.container_ids,
        "estimated_bytes": answer.estimated_bytes,
        "free_bytes": answer.free_bytes,
        "dump_rate_bytes_per_second": answer.dump_rate_bytes_per_second,
        "estimated_seconds": answer.estimated_seconds,
        "checks": checks,
    })
}

/// crictl's way: a header of capitals, columns padded to their widest.
fn print_table(pod: &str, answer: &CheckPodResponse) {
    let rows: Vec<[&str; 4]> = answer
        .checks
        .iter()
        .map(|c| {
            [
                c.name.as_str(),
                short(&c.container_id),
                verdict(c.verdict),
                c.detail.as_str(),
            ]
        })
        .collect();
    let header = ["CHECK", "CONTAINER", "RESULT", "DETAIL"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let line = |cells: [&str; 4]| {
        let padded: Vec<String> = cells[..3]
            .iter()
            .zip(widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}   {}", padded.join("   "), cells[3]);
    };
    line(header);
    for row in rows {
        line(row);
    }
    println!();
    println!("Pod:             {pod}");
    println!(
        "Estimated size:  {} ({} container{})",
        human(answer.estimated_bytes),
        answer.container_ids.len(),
        if answer.container_ids.len() == 1 { "" } else { "s" }
    );
    println!("Checkpointable:  {}", if answer.checkpointable { "yes" } else { "no" });
}
