//! How a restore marks what it creates for podckpt-runc: a root-only token
//! file per container (and per sandbox, for a backend that restores
//! sandboxes whole), named by an annotation appended to the caller's
//! encoded config, so that every other byte of it reaches the runtime as
//! the caller sent it; and the new sandbox's PID floor.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use prost::Message;

use super::super::error::PodError;
use super::verify::{VerifiedCheckpoint, VerifiedContainer};
use crate::api::cri;
use crate::api::pod::{ContainerConfigAnnotations, PodSandboxConfigAnnotations};
use crate::interposer::pid_floor;
use crate::interposer::token::{self, RestoreToken};

/// Where podckptd keeps restore tokens, under its state directory.
pub(in crate::pod) const TOKENS_DIR: &str = "restores";

fn tokens_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(TOKENS_DIR)
}

/// The annotations that mark a new sandbox: its PID floor, and for a
/// backend that restores sandboxes whole, the sandbox's own token (written
/// here, and recorded in `tokens` for an undo).
pub(super) fn sandbox_annotations(
    state_dir: &Path,
    pid_floor: Option<u32>,
    sandbox_token: Option<RestoreToken>,
    tokens: &mut Vec<PathBuf>,
) -> Result<HashMap<String, String>, PodError> {
    let mut annotations = HashMap::new();
    if let Some(floor) = pid_floor {
        annotations.insert(pid_floor::ANNOTATION.to_owned(), floor.to_string());
    }
    if let Some(token) = sandbox_token {
        let path = token.write(&tokens_dir(state_dir))?;
        tokens.push(path.clone());
        annotations.insert(token::SANDBOX_ANNOTATION.to_owned(), path.display().to_string());
    }
    Ok(annotations)
}

/// The caller's encoded PodSandboxConfig with `annotations` added.
pub(super) fn annotate_sandbox(config: &[u8], annotations: HashMap<String, String>) -> Result<Vec<u8>, PodError> {
    let mut marked = config.to_vec();
    if !annotations.is_empty() {
        PodSandboxConfigAnnotations { annotations }
            .encode(&mut marked)
            .map_err(|e| PodError::Internal(format!("encoding the sandbox's restore markers: {e}")))?;
    }
    Ok(marked)
}

/// How podckpt-runc is to restore what a token names.
pub(super) struct How {
    /// The handler's backend kind (its config's `backend`).
    pub backend: String,
    pub lazy_pages: bool,
}

/// The token of a sandbox restored whole, for a backend that restores
/// sandboxes whole; none for any other. It names the pod by its UID (from
/// the caller's encoded PodSandboxConfig): the sandbox has no id yet.
pub(super) fn sandbox_token(
    checkpoint: &VerifiedCheckpoint,
    config: &[u8],
    how: &How,
) -> Result<Option<RestoreToken>, PodError> {
    let Some(image) = &checkpoint.sandbox else {
        return Ok(None);
    };
    let pod_uid = cri::PodSandboxConfig::decode(config)
        .ok()
        .and_then(|c| c.metadata)
        .map(|m| m.uid)
        .filter(|uid| !uid.is_empty())
        .ok_or_else(|| PodError::InvalidArgument("config.metadata.uid is needed to restore a whole sandbox".into()))?;
    Ok(Some(RestoreToken {
        checkpoint: image.clone(),
        sandbox_id: String::new(),
        container_name: String::new(),
        pod_uid,
        backend: how.backend.clone(),
        lazy_pages: false,
    }))
}

/// Writes the token of `container` of the checkpoint, to be created in
/// sandbox `sandbox_id`, and returns it with the caller's encoded
/// ContainerConfig marked with it.
pub(super) fn mark_container(
    state_dir: &Path,
    checkpoint: &VerifiedCheckpoint,
    container: &VerifiedContainer,
    sandbox_id: &str,
    how: &How,
) -> Result<(PathBuf, Vec<u8>), PodError> {
    let token = RestoreToken {
        // A sandbox restored whole holds every container's processes.
        checkpoint: checkpoint.sandbox.clone().unwrap_or_else(|| container.folder.clone()),
        sandbox_id: sandbox_id.to_owned(),
        container_name: container.name.clone(),
        pod_uid: String::new(),
        backend: how.backend.clone(),
        lazy_pages: how.lazy_pages,
    };
    let path = token.write(&tokens_dir(state_dir))?;
    let mut marked = container.config.clone();
    let marker = ContainerConfigAnnotations {
        annotations: [(token::ANNOTATION.to_owned(), path.display().to_string())].into(),
    };
    if let Err(e) = marker.encode(&mut marked) {
        let _ = std::fs::remove_file(&path);
        return Err(PodError::Internal(format!("encoding the restore marker: {e}")));
    }
    Ok((path, marked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_appended_and_the_rest_is_kept() {
        let config = cri::PodSandboxConfig {
            hostname: "h".into(),
            annotations: [("a".to_string(), "1".to_string())].into(),
            ..Default::default()
        };
        let mut tokens = Vec::new();
        let annotations = sandbox_annotations(Path::new("/nonexistent"), Some(364), None, &mut tokens).unwrap();
        let marked = annotate_sandbox(&config.encode_to_vec(), annotations).unwrap();
        let decoded = cri::PodSandboxConfig::decode(marked.as_slice()).unwrap();
        assert_eq!(decoded.hostname, "h");
        assert_eq!(decoded.annotations["a"], "1");
        assert_eq!(decoded.annotations[pid_floor::ANNOTATION], "364");
        assert!(tokens.is_empty());
        // Nothing to add: the bytes as they came.
        assert_eq!(annotate_sandbox(b"\x0a\x00", HashMap::new()).unwrap(), b"\x0a\x00");
    }
}
