//! Running an OCI runtime's command (runc, crun, runsc) for a backend, so
//! that an abandoned call never leaves the runtime, or what it started,
//! going on alone.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::Command;
use tracing::{debug, warn};

use super::BackendError;

/// `BINARY --root ROOT ACTION EXTRA... ID`, with `env` added to podckptd's
/// environment (which the runtime passes on to CRIU); its stderr is the
/// error.
pub async fn run(
    binary: &Path,
    root: &Path,
    action: &'static str,
    id: &str,
    extra: &[&OsStr],
    env: &[(&str, &OsStr)],
) -> Result<(), BackendError> {
    let mut cmd = Command::new(binary);
    cmd.arg("--root").arg(root).arg(action).args(extra).arg(id);
    cmd.envs(env.iter().copied());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own group, so that what it starts (CRIU) can be killed with it.
        .process_group(0);
    debug!(binary = %binary.display(), action, container = %id, "running");
    let child = cmd.spawn().map_err(|source| BackendError::Spawn {
        binary: binary.to_owned(),
        source,
    })?;
    let mut group = KillGroupOnDrop(child.id().map(|pid| Pid::from_raw(pid as i32)));
    let output = child.wait_with_output().await.map_err(|source| BackendError::Spawn {
        binary: binary.to_owned(),
        source,
    })?;
    group.0 = None;
    if output.status.success() {
        return Ok(());
    }
    Err(BackendError::Failed {
        binary: binary.to_owned(),
        action,
        container: id.to_owned(),
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    })
}

/// An engine's version: the rest of the line of `BINARY --version` that
/// starts with `prefix`.
pub async fn version(binary: &Path, prefix: &str) -> Result<String, BackendError> {
    let output = output(binary, &["--version"]).await?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| {
            BackendError::Unsupported(format!("cannot read the version of {} from {text:?}", binary.display()))
        })
}

/// Runs an engine's self-check, such as `criu check`; what it printed, on
/// success or in the error.
pub async fn check(binary: &Path, args: &[&str]) -> Result<String, BackendError> {
    let output = output(binary, args).await?;
    let mut said = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let errors = String::from_utf8_lossy(&output.stderr);
    if !errors.trim().is_empty() {
        if !said.is_empty() {
            said.push('\n');
        }
        said.push_str(errors.trim());
    }
    if output.status.success() {
        return Ok(said);
    }
    Err(BackendError::CheckFailed {
        command: format!("{} {}", binary.display(), args.join(" ")),
        status: output.status,
        output: said,
    })
}

/// `BINARY ARGS...` run to its end, killed if the call is dropped.
async fn output(binary: &Path, args: &[&str]) -> Result<std::process::Output, BackendError> {
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| BackendError::Spawn {
            binary: binary.to_owned(),
            source,
        })
}

/// Kills a runtime call's whole process group if the call is abandoned
/// before it ends, so no runc or CRIU goes on alone on a container that is
/// being resumed. A call that ends disarms it.
struct KillGroupOnDrop(Option<Pid>);

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if let Some(group) = self.0.take() {
            warn!(
                process_group = group.as_raw(),
                "abandoned runtime call; killing it and its children"
            );
            let _ = killpg(group, Signal::SIGKILL);
        }
    }
}
