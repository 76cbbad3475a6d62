//! A restore for runtimes that read a container's state right after
//! `create` and insist it is "created" (CRI-O): the container is restored at
//! `create`, as on containerd, but held stopped until `start`.
//!
//! CRIU leaves the restored processes stopped (its `leave-stopped`, given
//! through the CRIU configuration file that runc reads from the spec's
//! `org.criu.config` annotation). So the container's processes exist, with
//! their real pids, namespaces and cgroup, and the monitor (conmon) watches
//! the real init, but none of them runs an instruction before `start`.
//! Until then `state` reports "created"; `start` continues every process of
//! the container; a signal sent to a held container is followed by a
//! continue, so that it takes effect as it would on a created one.

use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use super::{InterposerError, cli};

/// Left in runc's state directory of a container held stopped until `start`.
const HELD_MARKER: &str = "podckpt-held";
/// runc reads CRIU options from the file this spec annotation names.
const CRIU_CONFIG_ANNOTATION: &str = "org.criu.config";
/// The commands a held container answers differently.
const HELD_COMMANDS: [&str; 3] = ["state", "start", "kill"];

/// The marker of the container this invocation is about, if it is held.
pub fn holds(inv: &cli::Invocation) -> Option<PathBuf> {
    let command = inv.command.as_deref().and_then(OsStr::to_str)?;
    if !HELD_COMMANDS.contains(&command) {
        return None;
    }
    // The id is the first operand of each: `kill [--all] ID [SIGNAL]`.
    let id = inv.rest.iter().find(|a| !a.to_string_lossy().starts_with('-'))?;
    let marker = Path::new(inv.root.as_ref()?).join(id).join(HELD_MARKER);
    marker.exists().then_some(marker)
}

/// Points the bundle's spec at a CRIU configuration that leaves the
/// restored processes stopped. Whatever `org.criu.config` the spec carried
/// (a pod's annotations reach the spec on CRI-O) is replaced: CRIU runs as
/// root, and its options are never the pod's to choose.
pub fn prepare(bundle: &Path) -> Result<(), InterposerError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |e: std::io::Error| InterposerError::Io(format!("{}: {e}", path.display()))
    };
    let work = bundle.join(crate::backend::runc::RESTORE_WORK_DIR);
    std::fs::create_dir_all(&work).map_err(io(&work))?;
    let config = work.join("criu-held.conf");
    std::fs::write(&config, "leave-stopped\n").map_err(io(&config))?;
    let mut spec = super::read_spec(bundle)?;
    spec["annotations"][CRIU_CONFIG_ANNOTATION] = serde_json::Value::String(config.display().to_string());
    let path = bundle.join("config.json");
    let staged = bundle.join("config.json.podckpt");
    let text = serde_json::to_vec(&spec).map_err(|e| InterposerError::Io(e.to_string()))?;
    std::fs::write(&staged, text)
        .and_then(|()| std::fs::rename(&staged, &path))
        .map_err(io(&path))
}

/// After the restore: every process of the container must be stopped, or
/// the restore did not hold it and `create` fails rather than let it run
/// before `start`. Then the container is marked held.
pub fn mark(root: &Path, id: &OsStr, init: i32) -> Result<(), InterposerError> {
    wait_stopped(init, STOP_LIMIT)?;
    let marker = root.join(id).join(HELD_MARKER);
    std::fs::write(&marker, b"").map_err(|e| InterposerError::Io(format!("{}: {e}", marker.display())))
}

/// How long a restored process may take to act on the SIGSTOP CRIU left it.
const STOP_LIMIT: std::time::Duration = std::time::Duration::from_secs(2);

/// SIGSTOP's bit in /proc/PID/status's pending-signal masks (signal 19).
const SIGSTOP_PENDING: u64 = 1 << (19 - 1);

/// Waits until process `pid` is stopped. CRIU's `leave-stopped` sends each
/// restored process SIGSTOP while it still traces it, then lets it go: the
/// process stops before it runs an instruction of its own, but only once
/// it is scheduled, so on a busy node it can still show as running, its
/// SIGSTOP pending, when runc has already returned. That is waited out; a
/// process that is neither stopped nor about to stop is an error.
fn wait_stopped(pid: i32, limit: std::time::Duration) -> Result<(), InterposerError> {
    let started = std::time::Instant::now();
    loop {
        let state = crate::backend::runc::tree::stat_fields(pid as u32).and_then(|fields| fields.into_iter().next());
        if state.as_deref() == Some("T") {
            return Ok(());
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        if !stop_pending(&status) || started.elapsed() >= limit {
            return Err(InterposerError::Io(format!(
                "the restored process {pid} is not stopped (state {state:?}); CRIU did not apply leave-stopped, so the container cannot be held until start"
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Whether a SIGSTOP waits in the masks of /proc/PID/status (`SigPnd` for
/// the thread, `ShdPnd` for the process, which is where kill(2) puts it).
fn stop_pending(status: &str) -> bool {
    status
        .lines()
        .filter_map(|line| line.strip_prefix("SigPnd:").or_else(|| line.strip_prefix("ShdPnd:")))
        .filter_map(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .any(|mask| mask & SIGSTOP_PENDING != 0)
}

/// `state`, `start` or `kill` of a held container.
pub fn command(runtime: &Path, inv: &cli::Invocation, marker: &Path) -> ExitCode {
    let command = inv.command.as_deref().and_then(OsStr::to_str).unwrap_or_default();
    let result = match command {
        "state" => state(runtime, inv),
        "start" => continue_all(runtime, inv).map(|()| {
            let _ = std::fs::remove_file(marker);
        }),
        _ => kill(runtime, inv, marker),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("podckpt-runc: {why}");
            ExitCode::FAILURE
        }
    }
}

fn id(inv: &cli::Invocation) -> Result<&OsString, String> {
    inv.rest
        .iter()
        .find(|a| !a.to_string_lossy().starts_with('-'))
        .ok_or_else(|| "no container id".to_owned())
}

fn run(runtime: &Path, inv: &cli::Invocation, args: &[&OsStr]) -> Result<std::process::Output, String> {
    let out = Command::new(runtime)
        .args(&inv.global)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", runtime.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(out)
}

/// The runtime's state, but "created" while the processes wait for `start`.
fn state(runtime: &Path, inv: &cli::Invocation) -> Result<(), String> {
    let out = run(runtime, inv, &["state".as_ref(), id(inv)?])?;
    let mut state: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{} state: {e}", runtime.display()))?;
    if state["status"] == "running" {
        state["status"] = "created".into();
    }
    let text = serde_json::to_string_pretty(&state).map_err(|e| e.to_string())?;
    writeln!(std::io::stdout(), "{text}").map_err(|e| e.to_string())
}

/// Continues every process of the container.
fn continue_all(runtime: &Path, inv: &cli::Invocation) -> Result<(), String> {
    run(
        runtime,
        inv,
        &["kill".as_ref(), "--all".as_ref(), id(inv)?, "CONT".as_ref()],
    )
    .map(drop)
}

/// The signal as asked, then a continue: a stopped process would keep a
/// TERM pending until then, and a created container ends on one.
fn kill(runtime: &Path, inv: &cli::Invocation, marker: &Path) -> Result<(), String> {
    let mut args: Vec<&OsStr> = vec!["kill".as_ref()];
    args.extend(inv.rest.iter().map(OsString::as_os_str));
    run(runtime, inv, &args)?;
    let _ = std::fs::remove_file(marker);
    continue_all(runtime, inv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_marked_container_is_held_and_only_for_its_commands() {
        let root = tempfile::tempdir().unwrap();
        let root_flag = root.path().to_str().unwrap();
        let call = |args: &[&str]| {
            let mut all = vec!["--root", root_flag];
            all.extend_from_slice(args);
            holds(&cli::parse(&all.iter().map(OsString::from).collect::<Vec<_>>()))
        };
        assert_eq!(call(&["state", "abc"]), None);
        std::fs::create_dir_all(root.path().join("abc")).unwrap();
        let marker = root.path().join("abc").join(HELD_MARKER);
        std::fs::write(&marker, b"").unwrap();
        assert_eq!(call(&["state", "abc"]), Some(marker.clone()));
        assert_eq!(call(&["kill", "--all", "abc", "KILL"]), Some(marker.clone()));
        assert_eq!(call(&["start", "abc"]), Some(marker));
        assert_eq!(call(&["delete", "--force", "abc"]), None, "delete is runc's alone");
        assert_eq!(call(&["state", "other"]), None);
    }

    #[test]
    fn a_pods_criu_config_is_replaced_by_ours() {
        let bundle = tempfile::tempdir().unwrap();
        let spec =
            serde_json::json!({"annotations": {"org.criu.config": "/pod/chose/this"}, "root": {"path": "rootfs"}});
        std::fs::write(bundle.path().join("config.json"), spec.to_string()).unwrap();
        prepare(bundle.path()).unwrap();
        let spec = super::super::read_spec(bundle.path()).unwrap();
        let config = spec["annotations"][CRIU_CONFIG_ANNOTATION].as_str().unwrap();
        assert!(config.starts_with(bundle.path().to_str().unwrap()), "{config}");
        assert_eq!(std::fs::read_to_string(config).unwrap(), "leave-stopped\n");
        assert_eq!(spec["root"]["path"], "rootfs", "the rest of the spec is kept");
    }

    #[test]
    fn a_pending_sigstop_is_read_from_either_mask() {
        let status =
            |sig: &str, shd: &str| format!("Name:\tsh\nSigPnd:\t{sig}\nShdPnd:\t{shd}\nSigBlk:\t0000000000000000\n");
        assert!(stop_pending(&status("0000000000000000", "0000000000040000")));
        assert!(stop_pending(&status("0000000000040000", "0000000000000000")));
        assert!(
            !stop_pending(&status("0000000000000000", "0000000000004000")),
            "SIGTERM is not a stop"
        );
        assert!(!stop_pending(""));
    }

    #[test]
    fn a_running_process_without_a_stop_pending_is_not_held() {
        // This test's own process runs and has no SIGSTOP pending.
        let err = wait_stopped(std::process::id() as i32, std::time::Duration::from_millis(20)).unwrap_err();
        assert!(err.to_string().contains("is not stopped"), "{err}");
    }
}
