//! `podckpt checkpoints` and `podckpt rmcp`: the checkpoints podckptd keeps
//! by name under its checkpoint root.

use super::{CliError, Clients, Format};
use crate::api::podckpt::{DeleteRequest, ListRequest};
use crate::archive::space::human;

pub(super) async fn list(clients: &Clients, format: Format, namespace: Option<String>) -> Result<(), CliError> {
    let listed = clients
        .checkpoints
        .clone()
        .list(clients.request(ListRequest {
            namespace: namespace.unwrap_or_default(),
        }))
        .await
        .map_err(CliError::call("Checkpoints/List"))?
        .into_inner();
    match format {
        Format::Json => {
            let checkpoints: Vec<serde_json::Value> = listed
                .checkpoints
                .iter()
                .map(|c| {
                    serde_json::json!({"namespace": c.namespace, "name": c.name, "path": c.path, "committed": c.committed, "bytes": c.bytes})
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"root": listed.root, "checkpoints": checkpoints})
            );
        }
        Format::Table => {
            println!("{:<20} {:<30} {:>10}  COMMITTED", "NAMESPACE", "NAME", "SIZE");
            for c in &listed.checkpoints {
                println!(
                    "{:<20} {:<30} {:>10}  {}",
                    c.namespace,
                    c.name,
                    human(c.bytes),
                    if c.committed { "yes" } else { "no" }
                );
            }
        }
    }
    Ok(())
}

pub(super) async fn remove(clients: &Clients, format: Format, namespace: String, name: String) -> Result<(), CliError> {
    clients
        .checkpoints
        .clone()
        .delete(clients.request(DeleteRequest {
            namespace: namespace.clone(),
            name: name.clone(),
        }))
        .await
        .map_err(CliError::call("Checkpoints/Delete"))?;
    match format {
        Format::Json => println!(
            "{}",
            serde_json::json!({"namespace": namespace, "name": name, "removed": true})
        ),
        Format::Table => println!("{namespace}/{name}"),
    }
    Ok(())
}
