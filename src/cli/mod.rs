//! `podckpt`, the command-line client, in crictl's style.

mod checkpoint;
pub(crate) mod configs;
mod inspect;
mod named;
mod preflight;
mod restore;
mod transfer;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use tonic::transport::Channel;

use crate::api::cri::runtime_service_client::RuntimeServiceClient;
use crate::api::pod::runtime_service_client::RuntimeServiceClient as PodClient;
use crate::api::podckpt::checkpoints_client::CheckpointsClient;
use crate::api::podckpt::preflight_client::PreflightClient;
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
        #[arg(short = 'o', long = "output-dir", conflicts_with = "name")]
        dir: Option<PathBuf>,
        /// Keep it by name, under podckptd's checkpoint root as NAMESPACE/NAME (the pod's namespace): what a pod's podckpt.io/restore-from annotation names
        #[arg(long)]
        name: Option<String>,
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
    /// Check, pausing nothing, whether a pod can be checkpointed now, and every reason why not; exits 3 if not
    Preflight {
        /// Pod sandbox ID (or a unique prefix)
        pod: String,
        /// Where the checkpoint would be written: it must be empty if it exists, and its free space is checked [default: a new directory here, as checkpointp makes]
        #[arg(long = "output-dir", value_name = "DIR")]
        dir: Option<PathBuf>,
        /// The option KEY=VALUE checkpointp would be given (what a capture can carry depends on them)
        #[arg(long = "option", value_name = "KEY=VALUE")]
        options: Vec<String>,
        /// Check only these containers (ID) [default: every running container of the pod]
        #[arg(long = "container", value_name = "ID")]
        containers: Vec<String>,
        /// Output format, as crictl's -o (the same as --output)
        #[arg(short = 'o', value_enum, value_name = "FORMAT")]
        format: Option<Format>,
    },
    /// List the checkpoints kept by name under podckptd's checkpoint root
    Checkpoints {
        /// Only this namespace's
        #[arg(long, short = 'n')]
        namespace: Option<String>,
    },
    /// Remove a checkpoint kept by name
    Rmcp {
        /// Its namespace
        #[arg(long, short = 'n')]
        namespace: String,
        /// Its name
        name: String,
    },
    /// Show what a checkpoint holds and whether its checksums hold
    Inspectcp {
        /// The checkpoint directory
        dir: PathBuf,
    },
    /// Write a checkpoint as one compressed, optionally encrypted stream, to move it to another node
    Export {
        /// The checkpoint directory
        dir: PathBuf,
        /// The stream's file (created, 0600), or - for standard output [default: -]
        #[arg(short = 'o', long = "output-file", value_name = "FILE|-")]
        file: Option<PathBuf>,
        /// Encrypt to this public key (age1...), or to every key in this file; may be repeated
        #[arg(long = "recipient", value_name = "KEY|FILE")]
        recipients: Vec<String>,
        /// zstd level
        #[arg(long, default_value_t = crate::archive::stream::DEFAULT_LEVEL, value_parser = clap::value_parser!(i32).range(1..=19))]
        level: i32,
    },
    /// Unpack an exported stream into an empty directory, verifying every byte
    #[command(override_usage = "podckpt import [OPTIONS] [FILE|-] DIR")]
    Import {
        /// The stream (standard input if only DIR is given, or -), then the checkpoint directory to make (created 0700 if missing, else empty)
        #[arg(num_args = 1..=2, required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// The age identity file that opens an encrypted stream; a plain stream is then refused
        #[arg(long, value_name = "FILE")]
        identity: Option<PathBuf>,
        /// podckptd's state directory, where the import is sealed for its first restore [default: the daemon's config, or /run/podckpt]
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Make a key pair for export --recipient and import --identity; prints the public key
    Keygen {
        /// The private key's file (created, 0600)
        #[arg(short = 'o', long = "output-file", value_name = "FILE")]
        file: PathBuf,
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
    #[error("{0}")]
    Stream(#[from] crate::archive::stream::StreamError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The pre-flight check said no; its reasons are printed already.
    #[error("{0}")]
    NotCheckpointable(String),
}

/// The exit status of `podckpt preflight` when the pod cannot be
/// checkpointed: apart from 1 (an error) and 2 (clap's, for a command line
/// it cannot parse), so that a script can tell "no" from "could not ask".
pub const NOT_CHECKPOINTABLE: i32 = 3;

impl CliError {
    fn call(call: &'static str) -> impl FnOnce(tonic::Status) -> Self {
        move |status| Self::Call { call, status }
    }
    fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// An id cut to 13 characters, as crictl shows ids. Ids may come from a
/// checkpoint's files or be echoed back as a caller gave them, so they may
/// be any text: cut on a character boundary.
fn short(id: &str) -> &str {
    id.char_indices().nth(13).map_or(id, |(end, _)| &id[..end])
}

/// Clients of podckptd: the pod calls, its own services (the pre-flight
/// check, checkpoints by name) and the ordinary CRI through it.
struct Clients {
    pods: PodClient<Channel>,
    preflight: PreflightClient<Channel>,
    checkpoints: CheckpointsClient<Channel>,
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

/// `--option KEY=VALUE` arguments as the pod calls' options map.
fn parse_options(options: &[String]) -> Result<std::collections::HashMap<String, String>, CliError> {
    options
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| CliError::Usage(format!("--option {kv:?}: expected KEY=VALUE")))
        })
        .collect()
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
        preflight: PreflightClient::new(channel.clone()),
        checkpoints: CheckpointsClient::new(channel.clone()),
        runtime: crate::cri_client::runtime(endpoint.path()),
        timeout: Duration::from_secs(cli.timeout),
    };
    match cli.command {
        Command::Checkpointp {
            pod,
            dir,
            name,
            options,
            containers,
        } => {
            let target = match name {
                Some(name) => checkpoint::Target::Named(name),
                None => checkpoint::Target::Dir(dir),
            };
            checkpoint::run(&clients, cli.output, &pod, target, &options, containers).await
        }
        Command::Checkpoints { namespace } => named::list(&clients, cli.output, namespace).await,
        Command::Rmcp { namespace, name } => named::remove(&clients, cli.output, namespace, name).await,
        Command::Restorep {
            dir,
            config,
            name,
            runtime_handler,
            start,
        } => restore::run(&clients, cli.output, &dir, config, name, runtime_handler, start).await,
        Command::Preflight {
            pod,
            dir,
            options,
            containers,
            format,
        } => preflight::run(&clients, format.unwrap_or(cli.output), &pod, dir, &options, containers).await,
        Command::Inspectcp { dir } => inspect::run(cli.output, &dir),
        Command::Export {
            dir,
            file,
            recipients,
            level,
        } => transfer::export(cli.output, &dir, file.as_deref(), &recipients, level),
        Command::Import {
            paths,
            identity,
            state_dir,
        } => {
            let (input, dir) = match paths.as_slice() {
                [dir] => (None, dir),
                [input, dir] => (Some(input.as_path()), dir),
                _ => unreachable!("clap takes one or two"),
            };
            transfer::import(cli.output, input, dir, identity.as_deref(), state_dir)
        }
        Command::Keygen { file } => transfer::keygen(cli.output, &file),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn ids_are_cut_on_a_character_boundary() {
        assert_eq!(short("0123456789abcdef"), "0123456789abc");
        assert_eq!(short("abc"), "abc");
        assert_eq!(short("ééééééééééééééé"), "ééééééééééééé");
    }

    /// clap checks a definition only when it parses; this checks every
    /// subcommand's, so a clash of names fails here and not on a node.
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["podckpt", "import", "-", "dir", "--output", "json"]).unwrap();
        assert!(matches!(cli.command, Command::Import { ref paths, .. } if paths.len() == 2));
        assert_eq!(cli.output, Format::Json);
        assert!(Cli::try_parse_from(["podckpt", "import", "a", "b", "c"]).is_err());
        assert!(Cli::try_parse_from(["podckpt", "checkpointp", "abc", "--name", "warm", "-o", "dir"]).is_err());
        let cli = Cli::try_parse_from(["podckpt", "preflight", "abc", "-o", "json"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Preflight {
                format: Some(Format::Json),
                ..
            }
        ));
    }
}
