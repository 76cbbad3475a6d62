//! `podckpt`, the command-line client, in crictl's style.

mod checkpoint;
pub(crate) mod configs;
mod inspect;
mod restore;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tonic::transport::Channel;

use crate::api::cri::runtime_service_client::RuntimeServiceClient;
use crate::api::pod::runtime_service_client::RuntimeServiceClient as PodClient;
use crate::endpoint::UnixEndpoint;

#[derive(Debug, Parser)]
#[command(
    name = "podckpt",
    version,
    about = "Checkpoint and restore whole pods through podckptd"
)]
pub struct Cli {
    /// podckptd's socket
    #[arg(long, short = 'r', global = true, default_value = "unix:///run/podckpt/podckpt.sock")]
    pub runtime_endpoint: String,
    /// Deadline for each call, in seconds; podckptd refuses pod calls without one
    #[arg(long, global = true, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout: u64,
    /// Output format
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Checkpoint a pod into a directory
    #[command(visible_alias = "checkpointpod")]
    Checkpointp {
        /// Pod sandbox ID (or a unique prefix)
        pod: String,
        /// Output directory; created if missing, must be empty [default: ./podckpt-POD-TIME]
        #[arg(short = 'o', long = "output-dir")]
        dir: Option<PathBuf>,
        /// Checkpoint option KEY=VALUE (podckpt.io/tcp-established, podckpt.io/file-locks, podckpt.io/tcp-skip-in-flight)
        #[arg(long = "option", value_name = "KEY=VALUE")]
        options: Vec<String>,
        /// Capture only these containers (ID) [default: every running container of the pod]
        #[arg(long = "container", value_name = "ID")]
        containers: Vec<String>,
    },
    /// Restore a pod from a checkpoint directory
    #[command(visible_alias = "restorepod")]
    Restorep {
        /// The checkpoint directory
        dir: PathBuf,
        /// The new pod's PodSandboxConfig, as crictl's JSON
        #[arg(long, conflicts_with = "name", required_unless_present = "name")]
        config: Option<PathBuf>,
        /// Name the new pod; the rest of its config comes from the checkpoint
        #[arg(long)]
        name: Option<String>,
        /// Runtime handler that runs podckpt-runc
        #[arg(long, default_value = crate::config::RESTORE_HANDLER)]
        runtime_handler: String,
        /// Start the restored containers
        #[arg(long)]
        start: bool,
    },
    /// Show what a checkpoint holds and whether its checksums hold
    Inspectcp {
        /// The checkpoint directory
        dir: PathBuf,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{call}: {} ({:?})", status.message(), status.code())]
    Call { call: &'static str, status: tonic::Status },
    #[error("{0}")]
    Endpoint(#[from] crate::endpoint::EndpointError),
    #[error("{0}")]
    Archive(#[from] crate::archive::ArchiveError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

impl CliError {
    fn call(call: &'static str) -> impl FnOnce(tonic::Status) -> Self {
        move |status| Self::Call { call, status }
    }
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// Clients of podckptd: the pod calls and the ordinary CRI through it.
struct Clients {
    pods: PodClient<Channel>,
    runtime: RuntimeServiceClient<Channel>,
    timeout: Duration,
}

impl Clients {
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
    }
}

/// Progress goes to stderr so that stdout stays parseable.
fn progress(format: Format, message: std::fmt::Arguments<'_>) {
    if format == Format::Table {
        eprintln!("{message}");
    }
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let endpoint = UnixEndpoint::parse(&cli.runtime_endpoint)?;
    let channel = crate::cri_client::channel(endpoint.path());
    let clients = Clients {
        pods: PodClient::new(channel.clone()),
        runtime: crate::cri_client::runtime(endpoint.path()),
        timeout: Duration::from_secs(cli.timeout),
    };
    match cli.command {
        Command::Checkpointp {
            pod,
            dir,
            options,
            containers,
        } => checkpoint::run(&clients, cli.output, &pod, dir, &options, containers).await,
        Command::Restorep {
            dir,
            config,
            name,
            runtime_handler,
            start,
        } => restore::run(&clients, cli.output, &dir, config, name, runtime_handler, start).await,
        Command::Inspectcp { dir } => inspect::run(cli.output, &dir),
    }
}
