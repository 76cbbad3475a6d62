//! What a restore checks before anything is created: that the handler can
//! restore the checkpoint, the manifest and every checksum (or the seal
//! that vouches for them), the layout; then, container by container, that
//! the caller's config describes the process the checkpoint holds. RestorePod
//! has every config at once; a restore by annotation gets them one
//! CreateContainer at a time, so the two steps stand apart.

use std::path::{Path, PathBuf};

use prost::Message;
use tracing::{debug, warn};

use super::super::contract;
use super::super::error::PodError;
use crate::api::cri;
use crate::archive::{self, Manifest, PodOptions, ProcessRecord, Seals};
use crate::backend::Checkpointer;

/// The runtime handler a restore goes through, and the backend it restores with.
pub(in crate::pod) struct Restorer {
    pub handler: String,
    /// The backend's name, as manifests record it (`criu-runc`, `runsc`).
    pub backend: String,
    /// The backend restores a whole sandbox from one image (`sandbox/`).
    pub whole_sandbox: bool,
    /// The only engine version that can restore, for a backend whose
    /// engine restores only its own images.
    pub engine_version: Option<String>,
}

/// A checkpoint that passed every check that needs no container config.
pub(in crate::pod) struct VerifiedCheckpoint {
    pub root: PathBuf,
    pub options: PodOptions,
    /// The image of the whole sandbox, for a backend that restores
    /// sandboxes whole; each container's processes are in it.
    pub sandbox: Option<PathBuf>,
    /// The highest PID the containers' processes held: the new pod's PID
    /// namespace gives out only PIDs above it (see `interposer::pid_floor`).
    pub pid_floor: Option<u32>,
}

/// One container of a verified checkpoint, and the caller's config for it.
pub(in crate::pod) struct VerifiedContainer {
    pub name: String,
    pub folder: PathBuf,
    /// The caller's encoded ContainerConfig, passed on as it came.
    pub config: Vec<u8>,
    /// The image the caller's config names, whole: the runtime may resolve
    /// it by more than its name (its runtime handler, annotations).
    pub image: cri::ImageSpec,
    pub record: ProcessRecord,
}

fn invalid(root: &Path, why: impl std::fmt::Display) -> PodError {
    PodError::InvalidArgument(format!("checkpoint {} is not usable: {why}", root.display()))
}

/// Whether the selected handler can restore this checkpoint at all: its
/// format and the backend that captured it. Cheap, so it comes before any
/// hashing; a refusal is FAILED_PRECONDITION, as the checkpoint itself is
/// sound.
fn check_restorable(root: &Path, manifest: &Manifest, restorer: &Restorer) -> Result<(), PodError> {
    let (found, current) = (manifest.format_version, archive::FORMAT_VERSION);
    if found < current {
        return Err(PodError::FailedPrecondition(format!(
            "checkpoint {} has format version {found}, from a podckpt that did not record the image id and process config of its containers, so this restore cannot be checked against the container configs; take the checkpoint again",
            root.display()
        )));
    }
    if found > current {
        return Err(PodError::FailedPrecondition(format!(
            "checkpoint {} has format version {found}, newer than this podckptd reads ({current}); restore it with a newer podckptd",
            root.display()
        )));
    }
    if manifest.backend != restorer.backend {
        return Err(PodError::FailedPrecondition(format!(
            "checkpoint {} was taken by backend {:?}, but runtime handler {:?} restores with {:?}; restore it through a handler whose backend is {:?}",
            root.display(),
            manifest.backend,
            restorer.handler,
            restorer.backend,
            manifest.backend
        )));
    }
    if let Some(version) = &restorer.engine_version
        && manifest.engine_version != *version
    {
        return Err(PodError::FailedPrecondition(format!(
            "checkpoint {} was taken with {} version {}, and this node's is {version}; {} restores only images of its own version",
            root.display(),
            manifest.backend,
            manifest.engine_version,
            manifest.backend
        )));
    }
    Ok(())
}

/// The manifest of the checkpoint at `root`, as it is on disk: its bytes
/// (what a seal is checked against) and their meaning.
pub(in crate::pod) fn read_manifest(root: &Path) -> Result<(Vec<u8>, Manifest), PodError> {
    let path = root.join(archive::MANIFEST);
    let bytes = std::fs::read(&path).map_err(|e| invalid(root, format!("{}: {e}", archive::MANIFEST)))?;
    let manifest = serde_json::from_slice(&bytes).map_err(|e| invalid(root, format!("{}: {e}", archive::MANIFEST)))?;
    Ok((bytes, manifest))
}

/// Everything that can be checked of the checkpoint at `checkpoint_path`
/// without a container config: that the handler can restore it, the
/// manifest and every checksum (which also refuses links and devices), and
/// that each container's folder is one. Blocking: it may hash gigabytes.
pub(in crate::pod) fn verify_checkpoint(
    checkpoint_path: &Path,
    restorer: &Restorer,
    seals: &Seals,
    checkpointer: &dyn Checkpointer,
) -> Result<VerifiedCheckpoint, PodError> {
    let root = checkpoint_path.to_owned();
    if !root.is_absolute() {
        return Err(PodError::InvalidArgument(format!(
            "checkpoint_path {:?} must be absolute",
            root.display()
        )));
    }
    let meta = std::fs::symlink_metadata(&root).map_err(|e| invalid(&root, e))?;
    if !meta.is_dir() {
        return Err(invalid(&root, "not a directory"));
    }
    let (manifest_bytes, manifest) = read_manifest(&root)?;
    check_restorable(&root, &manifest, restorer)?;
    // Taken first: what is trusted or hashed is what was there then, and
    // sealing checks that nothing moved while it was being hashed.
    let snapshot = seals.snapshot(&root).map_err(|e| invalid(&root, e))?;
    match snapshot.as_ref().and_then(|s| seals.unchanged(s, &manifest_bytes)) {
        Some(recheck) if recheck.is_empty() => {
            debug!(checkpoint = %root.display(), "sealed and unchanged");
        }
        recheck => {
            match recheck {
                Some(racy) => manifest.verify_files(&root, &racy),
                None => manifest.verify(&root),
            }
            .map_err(|e| invalid(&root, e))?;
            // The next restore hashes nothing.
            if let Some(snapshot) = snapshot
                && let Err(error) = seals.seal(snapshot, &manifest_bytes)
            {
                warn!(%error, "could not seal the verified checkpoint; the next restore will hash it again");
            }
        }
    }

    let options: PodOptions =
        serde_json::from_slice(&std::fs::read(root.join(archive::POD_OPTIONS)).map_err(|e| invalid(&root, e))?)
            .map_err(|e| invalid(&root, format!("{}: {e}", archive::POD_OPTIONS)))?;
    let sandbox = restorer.whole_sandbox.then(|| root.join(archive::SANDBOX_DIR));
    let mut pid_floor = None;
    for (name, folder_name) in &options.containers {
        let folder = root.join(folder_name);
        let is_child = Path::new(folder_name).components().count() == 1 && !folder_name.starts_with('.');
        // A whole-sandbox image holds every container's processes; a
        // container's folder then holds only what describes it.
        let images = match &sandbox {
            Some(sandbox) => sandbox.clone(),
            None => folder.join(archive::CHECKPOINT_DIR),
        };
        if !is_child || !images.is_dir() {
            return Err(invalid(
                &root,
                format!("container {name}: folder {folder_name:?} is not a checkpoint folder"),
            ));
        }
        let highest = checkpointer
            .highest_pid(&folder)
            .map_err(|e| invalid(&root, format!("container {name}: {e}")))?;
        pid_floor = pid_floor.max(highest);
    }
    Ok(VerifiedCheckpoint {
        root,
        options,
        sandbox,
        pid_floor,
    })
}

impl VerifiedCheckpoint {
    /// Whether the checkpoint holds a container of this name.
    pub fn holds(&self, name: &str) -> bool {
        self.options.containers.contains_key(name)
    }

    /// The namespace of the pod the checkpoint was taken from, as `pod.dump`
    /// (covered by the manifest) records it.
    pub fn source_namespace(&self) -> Result<String, PodError> {
        let path = self.root.join(archive::POD_DUMP);
        let dump: serde_json::Value = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|bytes| serde_json::from_slice(&bytes).map_err(|e| e.to_string()))
            .map_err(|e| invalid(&self.root, format!("{}: {e}", archive::POD_DUMP)))?;
        match dump["metadata"]["namespace"].as_str() {
            Some(namespace) if !namespace.is_empty() => Ok(namespace.to_owned()),
            _ => Err(invalid(
                &self.root,
                format!("{} names no namespace of the pod it was taken from", archive::POD_DUMP),
            )),
        }
    }

    /// The caller's encoded config for one of the checkpoint's containers,
    /// checked against the process it holds (all but the image, which the
    /// runtime must resolve: `PodService::check_image`).
    pub fn admit(&self, config: &[u8]) -> Result<VerifiedContainer, PodError> {
        let decoded = cri::ContainerConfig::decode(config)
            .map_err(|e| PodError::InvalidArgument(format!("a container config does not decode: {e}")))?;
        let name = decoded.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default();
        let folder_name = self.options.containers.get(&name).ok_or_else(|| {
            PodError::InvalidArgument(format!(
                "checkpoint {} holds no container {name:?}; it holds {:?}",
                self.root.display(),
                self.options.containers.keys().collect::<Vec<_>>()
            ))
        })?;
        let folder = self.root.join(folder_name);
        let unreadable =
            |e: &dyn std::fmt::Display| invalid(&self.root, format!("{folder_name}/{}: {e}", archive::PROCESS_RECORD));
        let raw = std::fs::read(folder.join(archive::PROCESS_RECORD)).map_err(|e| unreadable(&e))?;
        let record: ProcessRecord = serde_json::from_slice(&raw).map_err(|e| unreadable(&e))?;
        contract::check_process(&name, &record, &decoded)?;
        Ok(VerifiedContainer {
            image: decoded.image.unwrap_or_default(),
            name,
            folder,
            config: config.to_vec(),
            record,
        })
    }

    /// RestorePod's configs: exactly one per checkpointed container, each
    /// describing the process it holds.
    pub fn admit_all(&self, configs: &[Vec<u8>]) -> Result<Vec<VerifiedContainer>, PodError> {
        let mut seen = std::collections::BTreeSet::new();
        for bytes in configs {
            let name = cri::ContainerConfig::decode(bytes.as_ref())
                .map_err(|e| PodError::InvalidArgument(format!("a container config does not decode: {e}")))?
                .metadata
                .map(|m| m.name)
                .unwrap_or_default();
            if name.is_empty() || !seen.insert(name.clone()) {
                return Err(PodError::InvalidArgument(format!(
                    "container config names must be present and unique; {name:?} is not"
                )));
            }
        }
        let wanted: std::collections::BTreeSet<&String> = self.options.containers.keys().collect();
        let given: std::collections::BTreeSet<&String> = seen.iter().collect();
        if wanted != given {
            return Err(PodError::InvalidArgument(format!(
                "the container configs name {given:?} but the checkpoint holds {wanted:?}; give exactly one config per checkpointed container"
            )));
        }
        configs.iter().map(|bytes| self.admit(bytes)).collect()
    }
}
