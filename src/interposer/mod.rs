//! `podckpt-runc`: the OCI runtime that containerd or CRI-O runs in place of
//! runc (or crun) for a podckpt runtime handler. A container whose spec
//! carries a trusted restore token is brought back from its checkpoint on
//! `create`, and the `start` that follows is a no-op because its processes
//! already run. Every other call goes to the real runtime unchanged.

pub mod cli;
pub mod gvisor;
pub mod held;
pub mod identity;
pub mod pid_floor;
pub mod token;

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::backend::runc::CONTAINERD_RUNC_ROOT;
use crate::backend::{self, RestoreError, RestoreRequest};
use token::RestoreToken;

/// Left in runc's state directory of a restored container, so that the
/// following `start` knows there is nothing to start.
const RESTORED_MARKER: &str = "podckpt-restored";
/// Left beside runc's state of a restored container: where it came from and
/// how long the runtime's restore took.
pub const RESTORE_RECORD: &str = "podckpt-restore.json";

#[derive(Debug, thiserror::Error)]
pub enum InterposerError {
    #[error("restore token {0}")]
    UntrustedToken(String),
    #[error("bundle: {0}")]
    Bundle(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    /// The real runtime failed on its own and has said why.
    #[error("the runtime failed ({0})")]
    Runtime(std::process::ExitStatus),
}

/// What to do with one invocation.
#[derive(Debug)]
pub enum Action {
    /// Hand the arguments to the real runtime.
    PassThrough,
    /// `create` of a container to restore.
    Restore { create: cli::Create, token: PathBuf },
    /// `create` of a container to restore and hold stopped until `start`,
    /// for a runtime that wants it "created" until then (CRI-O; see `held`).
    RestoreHeld { create: cli::Create, token: PathBuf },
    /// `state`, `start` or `kill` of a container that `RestoreHeld` holds.
    Held { marker: PathBuf },
    /// `start` of a restored container: answer success.
    AlreadyStarted { marker: PathBuf },
    /// `create` of a restored pod's sandbox whose PID namespace must be
    /// kept clear of the checkpoint's PIDs (see `pid_floor`).
    CreateAbovePidFloor { create: cli::Create, floor: u32 },
}

pub fn decide(inv: &cli::Invocation) -> Result<Action, InterposerError> {
    if let Some(marker) = held::holds(inv) {
        return Ok(Action::Held { marker });
    }
    match inv.command.as_deref().and_then(OsStr::to_str) {
        Some("create") => {
            let Some(create) = cli::parse_create(&inv.rest) else {
                return Ok(Action::PassThrough);
            };
            let spec = read_spec(&bundle_of(&create))?;
            let Some(token) = spec["annotations"][token::ANNOTATION].as_str().map(PathBuf::from) else {
                return Ok(match pid_floor::requested(&spec) {
                    Some(floor) => Action::CreateAbovePidFloor { create, floor },
                    None => Action::PassThrough,
                });
            };
            Ok(match identity::CriRuntime::of(&spec) {
                identity::CriRuntime::CriO => Action::RestoreHeld { create, token },
                _ => Action::Restore { create, token },
            })
        }
        Some("start") => {
            let (Some(root), Some(id)) = (&inv.root, inv.rest.last()) else {
                return Ok(Action::PassThrough);
            };
            let marker = Path::new(root).join(id).join(RESTORED_MARKER);
            Ok(if marker.exists() {
                Action::AlreadyStarted { marker }
            } else {
                Action::PassThrough
            })
        }
        _ => Ok(Action::PassThrough),
    }
}

pub(crate) fn read_spec(bundle: &Path) -> Result<Value, InterposerError> {
    let path = bundle.join("config.json");
    let bytes = std::fs::read(&path).map_err(|e| InterposerError::Bundle(format!("{}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| InterposerError::Bundle(format!("{}: {e}", path.display())))
}

/// Restores the container: checks the token against the spec, then lets
/// the checkpoint's backend turn this `create` into a restore, with the
/// same global flags, bundle, pid file and console the shim gave `create`.
pub fn restore(
    runtime: &Path,
    inv: &cli::Invocation,
    create: &cli::Create,
    token_path: &Path,
) -> Result<(), InterposerError> {
    let (token, spec) = checked_token(create, token_path)?;
    restore_checked(runtime, inv, create, token_path, &token, &spec)
}

/// The token, if it is root's and was issued for the container of the
/// bundle's spec; and that spec.
fn checked_token(create: &cli::Create, token_path: &Path) -> Result<(RestoreToken, Value), InterposerError> {
    let token = RestoreToken::load_trusted(token_path)?;
    let spec = read_spec(&bundle_of(create))?;
    token.check_issued_for(&spec, token_path)?;
    Ok((token, spec))
}

fn bundle_of(create: &cli::Create) -> PathBuf {
    PathBuf::from(create.bundle.clone().unwrap_or_else(|| OsString::from(".")))
}

fn restore_checked(
    runtime: &Path,
    inv: &cli::Invocation,
    create: &cli::Create,
    token_path: &Path,
    token: &RestoreToken,
    spec: &Value,
) -> Result<(), InterposerError> {
    let bundle = bundle_of(create);
    let rootfs = bundle.join(spec["root"]["path"].as_str().unwrap_or("rootfs"));
    let root = inv
        .root
        .as_ref()
        .map_or_else(|| PathBuf::from(CONTAINERD_RUNC_ROOT), PathBuf::from);
    let backend = backend::for_handler(&token.backend, runtime, &root)
        .map_err(|why| InterposerError::UntrustedToken(format!("{}: {why}", token_path.display())))?;
    backend.check_restore(&token.checkpoint, spec)?;
    let restored = backend.restore(&RestoreRequest {
        checkpoint: &token.checkpoint,
        bundle: &bundle,
        rootfs: &rootfs,
        global: &inv.global,
        id: &create.id,
        pid_file: create.pid_file.as_deref(),
        console_socket: create.console_socket.as_deref(),
        no_pivot: create.no_pivot,
        lazy_pages: token.lazy_pages,
    })?;
    if let Some(root) = &inv.root {
        let marker = Path::new(root).join(&create.id).join(RESTORED_MARKER);
        std::fs::write(&marker, b"").map_err(|e| InterposerError::Io(format!("{}: {e}", marker.display())))?;
        record_restore(Path::new(root), &create.id, token, restored.engine_seconds);
    }
    // Single use: the same token cannot restore a second container.
    let _ = std::fs::remove_file(token_path);
    Ok(())
}

/// Restores the container held stopped until `start` (see `held`).
pub fn restore_held(
    runtime: &Path,
    inv: &cli::Invocation,
    create: &cli::Create,
    token_path: &Path,
) -> Result<(), InterposerError> {
    let (Some(root), Some(pid_file)) = (&inv.root, &create.pid_file) else {
        return Err(InterposerError::Bundle(
            "holding a restored container needs the runtime's --root and a --pid-file".into(),
        ));
    };
    // Nothing of the bundle changes for a token that is not root's, or not
    // for this container.
    let (token, spec) = checked_token(create, token_path)?;
    held::prepare(&bundle_of(create))?;
    restore_checked(runtime, inv, create, token_path, &token, &spec)?;
    let marked = crate::backend::runc::lazy::read_pid(Path::new(pid_file))
        .map_err(InterposerError::Restore)
        .and_then(|pid| held::mark(Path::new(root), &create.id, pid));
    if marked.is_err() {
        // Never left running before `start`.
        let _ = std::process::Command::new(runtime)
            .args(&inv.global)
            .args(["delete".as_ref(), "--force".as_ref(), create.id.as_os_str()])
            .status();
    }
    marked
}

/// How long the runtime's own restore took, next to runc's state of the
/// container: the bare baseline that podckpt's restore is measured against.
pub(crate) fn record_restore(root: &Path, id: &OsStr, token: &RestoreToken, engine_seconds: f64) {
    let record = serde_json::json!({
        "checkpoint": token.checkpoint,
        "runtime_restore_seconds": engine_seconds,
        "lazy_pages": token.lazy_pages,
    });
    let _ = std::fs::write(root.join(id).join(RESTORE_RECORD), record.to_string());
}

/// The real runtime: `PODCKPT_REAL_RUNTIME`, or the name this binary was
/// called by without its `podckpt-` prefix, looked up in PATH but never
/// resolving to ourselves.
pub fn real_runtime(argv0: &OsStr) -> Option<PathBuf> {
    if let Some(explicit) = std::env::var_os("PODCKPT_REAL_RUNTIME") {
        return Some(PathBuf::from(explicit));
    }
    let own_name = Path::new(argv0).file_name()?.to_str()?;
    let name = own_name.strip_prefix("podckpt-").unwrap_or("runc");
    let me = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok());
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| OsString::from("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file() && candidate.canonicalize().ok() != me)
}
