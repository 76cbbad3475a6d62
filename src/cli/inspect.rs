//! `podckpt inspectcp`.

use std::path::Path;

use serde_json::{Value, json};

use super::{CliError, Format};
use crate::archive::space::{human, tree_size};
use crate::archive::{self, Manifest, PodOptions};

/// How long the checkpoint in `dir` froze its pod, from its manifest.
pub(super) fn freeze_ms(dir: &Path) -> Option<u64> {
    read_json::<Manifest>(&dir.join(archive::MANIFEST)).ok()?.freeze_ms
}

pub(super) fn run(format: Format, dir: &Path) -> Result<(), CliError> {
    let manifest: Manifest = read_json(&dir.join(archive::MANIFEST))?;
    let options: PodOptions = read_json(&dir.join(archive::POD_OPTIONS))?;
    let checksums = manifest.verify(dir);
    let mut containers = Vec::new();
    for (name, folder) in &options.containers {
        let config: Value = read_json(&dir.join(folder).join(archive::CONFIG_DUMP)).unwrap_or(Value::Null);
        containers.push(json!({
            "name": name,
            "id": config["id"],
            "image": config["rootfsImageName"],
            "created": config["createdTime"],
            "checkpointed": config["checkpointedTime"],
            "bytes": tree_size(&dir.join(folder)),
        }));
    }
    let report = json!({
        "checkpoint": dir,
        "pod_sandbox_id": manifest.pod_sandbox_id,
        "created": manifest.created,
        "backend": manifest.backend,
        "engine_version": manifest.engine_version,
        "format_version": manifest.format_version,
        "freeze_ms": manifest.freeze_ms,
        "bytes": tree_size(dir),
        "checksums_ok": checksums.is_ok(),
        "checksum_error": checksums.as_ref().err().map(|e| e.to_string()),
        "containers": containers,
    });
    match format {
        Format::Json => println!("{report}"),
        Format::Table => {
            println!("Checkpoint:   {}", dir.display());
            println!("Pod:          {}", manifest.pod_sandbox_id);
            println!("Created:      {}", manifest.created);
            println!(
                "Backend:      {} (version {})",
                manifest.backend, manifest.engine_version
            );
            if let Some(ms) = manifest.freeze_ms {
                println!("Pod frozen:   {ms} ms");
            }
            println!("Size:         {}", human(tree_size(dir)));
            match &checksums {
                Ok(()) => println!("Checksums:    ok ({} files)", manifest.files.len()),
                Err(e) => println!("Checksums:    FAILED: {e}"),
            }
            println!();
            println!(
                "{:<20} {:<14} {:<32} {:>10}  CHECKPOINTED",
                "CONTAINER", "ID", "IMAGE", "SIZE"
            );
            for c in &containers {
                let id = c["id"].as_str().unwrap_or("");
                println!(
                    "{:<20} {:<14} {:<32} {:>10}  {}",
                    c["name"].as_str().unwrap_or(""),
                    super::short(id),
                    c["image"].as_str().unwrap_or(""),
                    human(c["bytes"].as_u64().unwrap_or(0)),
                    c["checkpointed"].as_str().unwrap_or("")
                );
            }
        }
    }
    if checksums.is_err() {
        return Err(CliError::Usage(format!("{}: the checksums do not hold", dir.display())));
    }
    Ok(())
}

pub(super) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, CliError> {
    let bytes = std::fs::read(path).map_err(CliError::io(path))?;
    serde_json::from_slice(&bytes).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}
