//! The pod checkpoint directory: its layout, its manifest, and how it is
//! built inside the caller's directory, private to root, and counted whole
//! only once its manifest is written.
//!
//! ```text
//! OUTPUT/
//!   manifest.json           written last: format version, CRIU version, SHA-256 of every file (by chunk)
//!   pod.options             {"version":1,"containers":{NAME: "ID-NAME"},"annotations":{..}}
//!   pod.dump                the PodSandboxConfig, as JSON
//!   ID-NAME/                one checkpointctl-compatible folder per container
//!     checkpoint/           CRIU images
//!     config.dump spec.dump status.dump stats-dump dump.log
//!     rootfs-diff.tar deleted.files
//!     podckpt-process.json  the image id and process config, checked on restore (see `record`)
//! ```

mod building;
pub mod digest;
pub mod durable;
pub mod manifest;
pub mod owned_path;
pub mod record;
pub mod rootfs_diff;
pub mod seal;
pub mod space;
pub mod stream;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use building::{Building, empty, is_committed, restrict_modes};
pub use manifest::{FileEntry, Manifest, digest_tree};
pub use record::ProcessRecord;
pub use seal::Seals;

/// The manifest's format. 2: each file's SHA-256 is a list, one per chunk
/// of `chunk_size` bytes. 3: every container folder holds `PROCESS_RECORD`;
/// without it a restore cannot be validated, so older checkpoints are refused.
pub const FORMAT_VERSION: u32 = 3;

/// `pod.options`'s own version, as the CRI-O and containerd prototypes write it.
pub const POD_OPTIONS_VERSION: u32 = 1;

pub const MANIFEST: &str = "manifest.json";
pub const POD_OPTIONS: &str = "pod.options";
pub const POD_DUMP: &str = "pod.dump";
pub const CHECKPOINT_DIR: &str = "checkpoint";
/// The image of a whole sandbox, for a backend that saves sandboxes (gVisor):
/// beside the container folders, which then hold no process images.
pub const SANDBOX_DIR: &str = "sandbox";
pub const CONFIG_DUMP: &str = "config.dump";
pub const SPEC_DUMP: &str = "spec.dump";
pub const STATUS_DUMP: &str = "status.dump";
pub const STATS_DUMP: &str = "stats-dump";
pub const DUMP_LOG: &str = "dump.log";
pub const ROOTFS_DIFF: &str = "rootfs-diff.tar";
pub const DELETED_FILES: &str = "deleted.files";
/// podckpt's own file in a container folder; checkpointctl ignores it.
pub const PROCESS_RECORD: &str = "podckpt-process.json";

/// Directories are private to root, and so is every file: a checkpoint
/// holds process memory, secrets included.
pub const DIR_MODE: u32 = 0o700;
pub const FILE_MODE: u32 = 0o600;

/// The folder of one container inside the pod checkpoint.
pub fn container_dir_name(id: &str, name: &str) -> String {
    format!("{id}-{name}")
}

/// `pod.options`, in the layout of the CRI-O and containerd prototypes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodOptions {
    pub version: u32,
    /// Container name to its folder.
    pub containers: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// `config.dump`, in the fields checkpointctl reads.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerConfigDump {
    pub id: String,
    pub name: String,
    pub rootfs_image_name: String,
    pub rootfs_image_ref: String,
    #[serde(rename = "runtime")]
    pub oci_runtime: String,
    pub created_time: String,
    #[serde(rename = "checkpointedTime")]
    pub checkpointed_at: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: std::path::PathBuf,
        source: serde_json::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl ArchiveError {
    /// For errors met while walking the tree under `root`.
    pub fn walk(root: &std::path::Path) -> impl FnOnce(walkdir::Error) -> Self + '_ {
        move |e| Self::Invalid(format!("walking {}: {e}", root.display()))
    }

    pub fn io(path: impl Into<std::path::PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// Writes `value` as JSON to `path`, mode 0600.
pub fn write_json(path: &std::path::Path, value: &impl Serialize) -> Result<(), ArchiveError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| ArchiveError::Json {
        path: path.into(),
        source,
    })?;
    write_private(path, &bytes)
}

/// Creates a new directory at `path`, mode 0700 from the start.
pub fn create_private_dir(path: &std::path::Path) -> Result<(), ArchiveError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(DIR_MODE)
        .create(path)
        .map_err(ArchiveError::io(path))
}

/// Makes `path` and what is missing above it, mode 0700 from the start;
/// an existing directory is left as it is.
pub fn create_private_dir_all(path: &std::path::Path) -> Result<(), ArchiveError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
        .map_err(ArchiveError::io(path))
}

/// Creates a new file at `path`, mode 0600 from the start.
pub fn create_private(path: &std::path::Path) -> Result<std::fs::File, ArchiveError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(path)
        .map_err(ArchiveError::io(path))
}

/// Writes `bytes` to a new file at `path`, mode 0600 from the start.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    use std::io::Write;
    create_private(path)?.write_all(bytes).map_err(ArchiveError::io(path))
}
