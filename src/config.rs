//! Daemon configuration: command-line flags over an optional TOML file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Deserialize;

use crate::endpoint::{EndpointError, UnixEndpoint};

pub const DEFAULT_LISTEN: &str = "/run/podckpt/podckpt.sock";
pub const DEFAULT_RUNTIME_ENDPOINT: &str = "unix:///run/containerd/containerd.sock";
pub const DEFAULT_CONFIG: &str = "/etc/podckpt/config.toml";
pub const DEFAULT_STATE_DIR: &str = "/run/podckpt";
/// Where checkpoints are kept by name: `ROOT/NAMESPACE/NAME`.
pub const DEFAULT_CHECKPOINT_ROOT: &str = "/var/lib/podckpt/checkpoints";
/// The runtime handler that runs podckpt-runc in the shipped containerd config.
pub const RESTORE_HANDLER: &str = "podckpt";
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// `podckptd` flags. Every one of them is optional so that the config file
/// can supply it; what neither gives takes the built-in default.
#[derive(Debug, Default, Parser)]
#[command(name = "podckptd", version, about = "CRI shim with pod-level checkpoint and restore")]
pub struct DaemonArgs {
    /// Unix socket to serve the CRI on [default: /run/podckpt/podckpt.sock]
    #[arg(long)]
    pub listen: Option<PathBuf>,
    /// The runtime below, as the kubelet writes it [default: unix:///run/containerd/containerd.sock]
    #[arg(long)]
    pub runtime_endpoint: Option<String>,
    /// TOML configuration file [default: /etc/podckpt/config.toml, if present]
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Log format
    #[arg(long, value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter in tracing's EnvFilter syntax, for example `info` or `podckpt=debug` [default: info]
    #[arg(long)]
    pub log_level: Option<String>,
    /// Seconds that in-flight calls get to finish after SIGTERM [default: 10]
    #[arg(long)]
    pub shutdown_grace_seconds: Option<u64>,
    /// Seconds to wait when dialing the runtime before answering UNAVAILABLE [default: 2]
    #[arg(long)]
    pub connect_timeout_seconds: Option<u64>,
    /// Where podckptd keeps the record of containers it has paused [default: /run/podckpt]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Serve Prometheus metrics on this loopback IP:PORT or unix:///PATH [default: off]
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Where checkpoints are kept by name, as ROOT/NAMESPACE/NAME [default: /var/lib/podckpt/checkpoints]
    #[arg(long)]
    pub checkpoint_root: Option<PathBuf>,
    /// Restore a pod whose sandbox config carries podckpt.io/restore-from when the kubelet creates it [default: false]
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub restore_from_annotation: Option<bool>,
}

/// How containers of one runtime handler are checkpointed.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    /// The checkpoint backend; `criu` (through the OCI runtime) is the one there is.
    #[serde(default = "HandlerConfig::default_backend")]
    pub backend: String,
    /// The OCI runtime binary that drives CRIU: `runc` or `crun`, or a path.
    #[serde(default = "HandlerConfig::default_runtime")]
    pub runtime: PathBuf,
    /// The OCI runtime's state directory (its `--root`) for this handler.
    /// Unset: read from the CRI runtime's own configuration of the handler
    /// (see `pod::runtime_roots`).
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Whether this handler runs podckpt-runc, so RestorePod may use it.
    #[serde(default)]
    pub restore: bool,
    /// Whether RestorePod restores memory lazily when the request does not
    /// say. Unset: whenever the backend can (CRIU through runc can, through
    /// crun cannot).
    #[serde(default)]
    pub lazy_pages: Option<bool>,
}

impl HandlerConfig {
    fn default_backend() -> String {
        "criu".into()
    }
    fn default_runtime() -> PathBuf {
        "runc".into()
    }
}

impl Default for HandlerConfig {
    fn default() -> Self {
        Self {
            backend: Self::default_backend(),
            runtime: Self::default_runtime(),
            root: None,
            restore: false,
            lazy_pages: None,
        }
    }
}

/// Who may call CheckpointPod and RestorePod, by peer credentials. Root
/// always may; ordinary CRI calls are not affected.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccessPolicy {
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
}

impl AccessPolicy {
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || self.uids.contains(&uid) || self.gids.contains(&gid)
    }
}

/// The config file; its keys mirror the long flags with underscores.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<PathBuf>,
    pub runtime_endpoint: Option<String>,
    pub log_format: Option<LogFormat>,
    pub log_level: Option<String>,
    pub shutdown_grace_seconds: Option<u64>,
    pub connect_timeout_seconds: Option<u64>,
    pub state_dir: Option<PathBuf>,
    /// Prometheus metrics: a loopback IP:PORT or unix:///PATH; unset, off.
    pub metrics_listen: Option<String>,
    /// Where checkpoints are kept by name: `ROOT/NAMESPACE/NAME`.
    pub checkpoint_root: Option<PathBuf>,
    /// Whether a pod annotated `podckpt.io/restore-from` is restored when
    /// the kubelet creates it.
    pub restore_from_annotation: Option<bool>,
    /// Extra uids allowed to call CheckpointPod and RestorePod.
    #[serde(default)]
    pub allowed_uids: Vec<u32>,
    /// Extra gids allowed to call CheckpointPod and RestorePod.
    #[serde(default)]
    pub allowed_gids: Vec<u32>,
    /// Backends by runtime handler; "" is the default handler.
    #[serde(default)]
    pub handlers: std::collections::BTreeMap<String, HandlerConfig>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is invalid: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("runtime endpoint: {0}")]
    Endpoint(#[from] EndpointError),
    #[error("listen path {0} must be absolute")]
    RelativeListen(PathBuf),
    #[error("{0} {1} must be an absolute path")]
    RelativePath(&'static str, PathBuf),
    #[error("{0}")]
    Metrics(String),
}

/// The settings the daemon runs with, after flags, file and defaults are merged.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub listen: PathBuf,
    pub runtime_endpoint: UnixEndpoint,
    pub log_format: LogFormat,
    pub log_level: String,
    pub shutdown_grace: Duration,
    pub connect_timeout: Duration,
    pub state_dir: PathBuf,
    /// Where metrics are served; `None`, nothing is served and no call is counted.
    pub metrics_listen: Option<crate::metrics::server::Address>,
    /// Where checkpoints are kept by name: `ROOT/NAMESPACE/NAME`.
    pub checkpoint_root: PathBuf,
    /// Whether RunPodSandbox and CreateContainer of a pod annotated
    /// `podckpt.io/restore-from` restore it (see `pod::restore::by_annotation`).
    pub restore_from_annotation: bool,
    pub access: AccessPolicy,
    /// Always has an entry for the default handler "".
    pub handlers: std::collections::BTreeMap<String, HandlerConfig>,
}

impl DaemonConfig {
    /// Merges flags over the config file. A missing file is an error only
    /// when the operator named it; the default path is optional.
    pub fn resolve(args: &DaemonArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => load_file(path)?,
            None if Path::new(DEFAULT_CONFIG).exists() => load_file(Path::new(DEFAULT_CONFIG))?,
            None => FileConfig::default(),
        };
        Self::merge(args, file)
    }

    fn merge(args: &DaemonArgs, file: FileConfig) -> Result<Self, ConfigError> {
        let listen = args
            .listen
            .clone()
            .or(file.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        if !listen.is_absolute() {
            return Err(ConfigError::RelativeListen(listen));
        }
        let endpoint = args
            .runtime_endpoint
            .clone()
            .or(file.runtime_endpoint)
            .unwrap_or_else(|| DEFAULT_RUNTIME_ENDPOINT.into());
        let seconds = |flag: Option<u64>, file: Option<u64>, default: Duration| {
            flag.or(file).map(Duration::from_secs).unwrap_or(default)
        };
        let mut handlers = file.handlers;
        handlers.entry(String::new()).or_default();
        // The handler name contrib/ configures containerd with for podckpt-runc.
        handlers.entry(RESTORE_HANDLER.into()).or_insert_with(|| HandlerConfig {
            restore: true,
            ..Default::default()
        });
        let metrics_listen = args
            .metrics_listen
            .clone()
            .or(file.metrics_listen)
            .map(|text| text.parse().map_err(ConfigError::Metrics))
            .transpose()?;
        let checkpoint_root = args
            .checkpoint_root
            .clone()
            .or(file.checkpoint_root)
            .unwrap_or_else(|| DEFAULT_CHECKPOINT_ROOT.into());
        if !checkpoint_root.is_absolute() {
            return Err(ConfigError::RelativePath("checkpoint_root", checkpoint_root));
        }
        Ok(Self {
            metrics_listen,
            checkpoint_root,
            restore_from_annotation: args
                .restore_from_annotation
                .or(file.restore_from_annotation)
                .unwrap_or(false),
            state_dir: args
                .state_dir
                .clone()
                .or(file.state_dir)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            access: AccessPolicy {
                uids: file.allowed_uids,
                gids: file.allowed_gids,
            },
            handlers,
            listen,
            runtime_endpoint: UnixEndpoint::parse(&endpoint)?,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            log_level: args
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or_else(|| "info".into()),
            shutdown_grace: seconds(
                args.shutdown_grace_seconds,
                file.shutdown_grace_seconds,
                DEFAULT_SHUTDOWN_GRACE,
            ),
            connect_timeout: seconds(
                args.connect_timeout_seconds,
                file.connect_timeout_seconds,
                DEFAULT_CONNECT_TIMEOUT,
            ),
        })
    }
}

/// The state directory of the node's podckptd, as its config file (if
/// any) sets it: where tools beside the daemon find its seals.
pub fn daemon_state_dir(config: &Path) -> Result<PathBuf, ConfigError> {
    let file = if config.exists() {
        load_file(config)?
    } else {
        FileConfig::default()
    };
    Ok(file.state_dir.unwrap_or_else(|| DEFAULT_STATE_DIR.into()))
}

fn load_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.into(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.into(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn defaults_apply_when_nothing_is_given() {
        let c = DaemonConfig::merge(&DaemonArgs::default(), FileConfig::default()).unwrap();
        assert_eq!(c.listen, Path::new(DEFAULT_LISTEN));
        assert_eq!(c.runtime_endpoint.to_string(), DEFAULT_RUNTIME_ENDPOINT);
        assert_eq!(c.log_format, LogFormat::Human);
        assert_eq!(c.shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
    }

    #[test]
    fn flags_win_over_the_file() {
        let f = file(
            "listen = \"/run/a.sock\"\nruntime_endpoint = \"unix:///run/file.sock\"\nlog_format = \"json\"\nshutdown_grace_seconds = 3\n",
        );
        let args = DaemonArgs {
            runtime_endpoint: Some("unix:///run/flag.sock".into()),
            ..Default::default()
        };
        let c = DaemonConfig::merge(&args, f).unwrap();
        assert_eq!(c.listen, Path::new("/run/a.sock"));
        assert_eq!(c.runtime_endpoint.path(), Path::new("/run/flag.sock"));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.shutdown_grace, Duration::from_secs(3));
    }

    #[test]
    fn unknown_keys_and_bad_endpoints_are_refused() {
        assert!(toml::from_str::<FileConfig>("listne = \"/x\"").is_err());
        let args = DaemonArgs {
            runtime_endpoint: Some("tcp://1.2.3.4:1".into()),
            ..Default::default()
        };
        assert!(matches!(
            DaemonConfig::merge(&args, FileConfig::default()),
            Err(ConfigError::Endpoint(_))
        ));
    }

    #[test]
    fn a_named_config_file_must_exist() {
        let args = DaemonArgs {
            config: Some("/nonexistent/podckpt.toml".into()),
            ..Default::default()
        };
        assert!(matches!(DaemonConfig::resolve(&args), Err(ConfigError::Read { .. })));
    }

    #[test]
    fn restore_by_annotation_is_off_unless_asked_for() {
        let c = DaemonConfig::merge(&DaemonArgs::default(), FileConfig::default()).unwrap();
        assert!(!c.restore_from_annotation);
        assert_eq!(c.checkpoint_root, Path::new(DEFAULT_CHECKPOINT_ROOT));
        let f = file("restore_from_annotation = true\ncheckpoint_root = \"/srv/ck\"\n");
        let c = DaemonConfig::merge(&DaemonArgs::default(), f).unwrap();
        assert!(c.restore_from_annotation);
        assert_eq!(c.checkpoint_root, Path::new("/srv/ck"));
        let args = DaemonArgs::parse_from(["podckptd", "--restore-from-annotation", "--checkpoint-root", "/x"]);
        let c = DaemonConfig::merge(&args, file("restore_from_annotation = false\n")).unwrap();
        assert!(c.restore_from_annotation);
        let args = DaemonArgs::parse_from(["podckptd", "--checkpoint-root", "relative"]);
        assert!(matches!(
            DaemonConfig::merge(&args, FileConfig::default()),
            Err(ConfigError::RelativePath(..))
        ));
    }

    #[test]
    fn handlers_and_access() {
        let f = file("allowed_uids = [1000]\n[handlers.crun]\nruntime = \"crun\"\nroot = \"/run/crun\"\n");
        let c = DaemonConfig::merge(&DaemonArgs::default(), f).unwrap();
        assert_eq!(c.handlers[""], HandlerConfig::default());
        assert_eq!(c.handlers["crun"].runtime, Path::new("crun"));
        assert!(c.access.allows(0, 0) && c.access.allows(1000, 1000) && !c.access.allows(1001, 1001));
    }
}

#[cfg(test)]
mod shipped_example {
    use super::*;

    /// The example in contrib/ must stay loadable and equal to the defaults.
    #[test]
    fn contrib_config_matches_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/config.toml");
        let args = DaemonArgs {
            config: Some(path),
            ..Default::default()
        };
        let from_file = DaemonConfig::resolve(&args).unwrap();
        let defaults = DaemonConfig::merge(&DaemonArgs::default(), FileConfig::default()).unwrap();
        assert_eq!(format!("{from_file:?}"), format!("{defaults:?}"));
    }
}
