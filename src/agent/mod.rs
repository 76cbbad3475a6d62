//! `podckpt-agent`: the node agent that turns PodCheckpoint objects of the
//! API server into pod calls on its node's podckptd. One runs on every node
//! (a DaemonSet, or a systemd unit), reaches podckptd over its socket only,
//! and never holds a checkpoint's bytes: podckptd makes, lists and removes
//! them. podckptd itself never talks to the API server.

pub mod crd;
pub mod podckptd;
pub mod reconcile;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use tracing::{info, warn};

use crate::config::LogFormat;
use crd::PodCheckpoint;
use reconcile::Context;

#[derive(Debug, Parser)]
#[command(
    name = "podckpt-agent",
    version,
    about = "Checkpoints pods of this node for PodCheckpoint objects"
)]
pub struct AgentArgs {
    /// This node's name, as the API server knows it [env: NODE_NAME]
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// podckptd's socket
    #[arg(long, default_value = "unix:///run/podckpt/podckpt.sock")]
    pub podckptd: String,
    /// The bytes the node's checkpoint root may hold; a PodCheckpoint that
    /// would pass it fails before its pod is paused [default: no cap]
    #[arg(long)]
    pub max_checkpoint_bytes: Option<u64>,
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
    /// Log filter in tracing's EnvFilter syntax
    #[arg(long, default_value = "info")]
    pub log_level: String,
    #[command(subcommand)]
    pub command: Option<AgentCommand>,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Print the PodCheckpoint CustomResourceDefinition as YAML
    Crd,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no node name: give --node-name, or NODE_NAME (the DaemonSet sets it from spec.nodeName)")]
    NoNodeName,
    #[error("{0}")]
    Endpoint(#[from] crate::endpoint::EndpointError),
    #[error("connecting to the API server: {0}")]
    Kube(#[from] kube::Error),
    #[error("{0}")]
    Yaml(#[from] serde_yaml::Error),
}

/// The CRD as YAML, as `deploy/kubernetes/crd.yaml` holds it.
pub fn crd_yaml() -> Result<String, AgentError> {
    use kube::CustomResourceExt;
    Ok(serde_yaml::to_string(&PodCheckpoint::crd())?)
}

pub async fn run(args: AgentArgs) -> Result<(), AgentError> {
    let node = args.node_name.ok_or(AgentError::NoNodeName)?;
    let socket = crate::endpoint::UnixEndpoint::parse(&args.podckptd)?;
    let client = Client::try_default().await?;
    let ctx = Arc::new(Context {
        client: client.clone(),
        node: node.clone(),
        podckptd: podckptd::Podckptd::new(socket.path()),
        max_bytes: args.max_checkpoint_bytes,
    });
    info!(node, podckptd = %socket, max_bytes = ?args.max_checkpoint_bytes, "podckpt-agent starting");
    match reconcile::remove_orphans(&ctx).await {
        Ok(0) => {}
        Ok(removed) => info!(removed, "removed checkpoints whose PodCheckpoint was deleted meanwhile"),
        Err(error) => warn!(%error, "could not look for checkpoints whose PodCheckpoint is gone"),
    }
    let checkpoints: Api<PodCheckpoint> = Api::all(client);
    Controller::new(checkpoints, watcher::Config::default())
        .shutdown_on_signal()
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|outcome| async move {
            if let Err(error) = outcome {
                warn!(%error, "reconcile");
            }
        })
        .await;
    Ok(())
}

/// Where the agent's own socket path default lives, for the unit and docs.
pub fn default_socket() -> PathBuf {
    PathBuf::from(crate::config::DEFAULT_LISTEN)
}
