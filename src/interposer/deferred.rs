//! A restore that waits for `start`, for runtimes that read a container's
//! state right after `create` and insist it is "created" (CRI-O). On
//! containerd the restore runs at `create` and `start` is a no-op; CRI-O
//! would see the restored process running and refuse StartContainer.
//!
//! So `create` checks the token and the spec, then leaves a holder: a
//! process of ours whose pid goes into the pid file. conmon, which runs
//! `create` and is a child subreaper, adopts it and watches it as the
//! container's process. Until `start`, the container is what runc's own
//! `create` would make of it: a process that holds the container's stdio and
//! has run none of its code. `state` reports it as "created", `kill` signals
//! it and `delete` ends it, as runc does with its `runc init`.
//!
//! `start` asks the holder to restore. The holder, itself a child subreaper,
//! runs the backend's restore with the stdio it kept, so the restored
//! process writes to the container's log and is reparented to the holder.
//! The holder answers, lets go of the stdio, waits for the restored process
//! and ends as it does: conmon sees the container's exit status.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use nix::sys::signal::{self, Signal};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::token::RestoreToken;
use super::{InterposerError, cli};
use crate::backend::{self, RestoreRequest};

/// The first argument that makes podckpt-runc a holder.
pub const HOLDER_COMMAND: &str = "podckpt-restore-holder";
/// Under the runtime's `--root`: one directory per container waiting to be
/// restored (or restored this way).
const PENDING: &str = "podckpt-pending";
const PLAN: &str = "plan.json";
const HOLDER_PID: &str = "holder.pid";
const SOCKET: &str = "holder.sock";
/// The restored init's pid, written by the runtime's restore.
const INIT_PID: &str = "init.pid";
/// The descriptor the holder gets its listening socket on.
const LISTENER_FD: i32 = 3;

/// What `create` was asked, kept for the restore at `start`.
#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    id: OsString,
    token: PathBuf,
    bundle: PathBuf,
    runtime: PathBuf,
    root: PathBuf,
    global: Vec<OsString>,
    no_pivot: bool,
    /// When `create` ran, RFC 3339, for `state`.
    created: String,
}

fn pending_dir(root: &Path, id: &OsStr) -> PathBuf {
    root.join(PENDING).join(id)
}

/// The commands a held container answers itself, until the runtime has it.
const HELD_COMMANDS: [&str; 4] = ["state", "start", "kill", "delete"];

/// The directory of the container this invocation is about, if this module
/// holds it (or has restored it).
pub fn holds(inv: &cli::Invocation) -> Option<PathBuf> {
    let command = inv.command.as_deref().and_then(OsStr::to_str)?;
    if !HELD_COMMANDS.contains(&command) {
        return None;
    }
    // The id is the first operand of each: `kill [--all] ID [SIGNAL]`,
    // `delete [--force] ID`.
    let id = inv.rest.iter().find(|a| !a.to_string_lossy().starts_with('-'))?;
    let dir = pending_dir(Path::new(inv.root.as_ref()?), id);
    dir.join(PLAN).exists().then_some(dir)
}

/// `create` of a container to restore at `start`: the token is checked now,
/// so that a bad one fails CreateContainer, and a holder takes the
/// container's place.
pub fn create(
    runtime: &Path,
    inv: &cli::Invocation,
    create: &cli::Create,
    token_path: &Path,
) -> Result<(), InterposerError> {
    if create.console_socket.is_some() {
        return Err(InterposerError::Bundle(
            "a container with a terminal (tty: true) cannot be restored on this runtime: its terminal is handed over at create, and the restore runs at start".into(),
        ));
    }
    let root = inv
        .root
        .as_ref()
        .map(PathBuf::from)
        .ok_or_else(|| InterposerError::Bundle("the runtime's --root is needed to hold a container until start".into()))?;
    let token = RestoreToken::load_trusted(token_path)?;
    let bundle = PathBuf::from(create.bundle.clone().unwrap_or_else(|| OsString::from(".")));
    let bundle = bundle.canonicalize().map_err(io(&bundle))?;
    let spec = super::read_spec(&bundle)?;
    token.check_issued_for(&spec, token_path)?;
    // What would fail at start is refused now, while RestorePod can still
    // tell its caller and undo the pod.
    backend::for_handler(&token.backend, runtime, &root)
        .map_err(|why| InterposerError::UntrustedToken(format!("{}: {why}", token_path.display())))?
        .check_restore(&token.checkpoint, &spec)?;
    let dir = pending_dir(&root, &create.id);
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let plan = Plan {
        id: create.id.clone(),
        token: token_path.to_owned(),
        bundle,
        runtime: runtime.to_owned(),
        root,
        global: inv.global.clone(),
        no_pivot: create.no_pivot,
        created: humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
    };
    let text = serde_json::to_vec(&plan).map_err(|e| InterposerError::Io(e.to_string()))?;
    std::fs::write(dir.join(PLAN), text).map_err(io(&dir.join(PLAN)))?;
    // Bound before the holder exists, so that a `start` right after this
    // `create` cannot find nobody listening.
    let socket = dir.join(SOCKET);
    let _ = std::fs::remove_file(&socket);
    let listener = in_dir(&dir, || UnixListener::bind(SOCKET)).map_err(io(&socket))?;
    let exe = std::env::current_exe().map_err(|e| InterposerError::Io(format!("finding podckpt-runc: {e}")))?;
    let listener_fd = listener.as_raw_fd();
    let mut holder = Command::new(exe);
    holder.arg(HOLDER_COMMAND).arg(&dir);
    // SAFETY: dup2 and fcntl are async-signal-safe; the descriptor is not
    // close-on-exec, so the holder inherits it as LISTENER_FD.
    unsafe {
        holder.pre_exec(move || {
            // dup2 onto itself keeps close-on-exec; clear it instead.
            let done = if listener_fd == LISTENER_FD {
                nix::libc::fcntl(LISTENER_FD, nix::libc::F_SETFD, 0)
            } else {
                nix::libc::dup2(listener_fd, LISTENER_FD)
            };
            if done < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    // Our stdio is the container's (conmon's pipes); the holder keeps it.
    let mut child = holder
        .spawn()
        .map_err(|e| InterposerError::Io(format!("starting the restore holder: {e}")))?;
    let recorded = std::fs::write(dir.join(HOLDER_PID), child.id().to_string())
        .map_err(io(&dir))
        .and_then(|()| match &create.pid_file {
            Some(pid_file) => std::fs::write(pid_file, child.id().to_string()).map_err(io(Path::new(pid_file))),
            None => Ok(()),
        });
    if recorded.is_err() {
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
    }
    recorded
}

/// A command for a container this module holds. `None`: the runtime has
/// the container now (restored), so the command is the runtime's.
pub fn command(dir: &Path, inv: &cli::Invocation) -> Option<ExitCode> {
    let plan = read_plan(dir).ok()?;
    let command = inv.command.as_deref().and_then(OsStr::to_str).unwrap_or_default();
    let restored = plan.root.join(&plan.id).join("state.json").exists();
    if command == "delete" {
        // Whatever the runtime deletes, the holder and its record go too.
        if let Some(pid) = holder_pid(dir) {
            let _ = signal::kill(pid, Signal::SIGKILL);
        }
        let _ = std::fs::remove_dir_all(dir);
        return if restored { None } else { Some(ExitCode::SUCCESS) };
    }
    if restored {
        return None;
    }
    Some(match command {
        "state" => state(dir, &plan),
        "start" => start(dir, &plan),
        "kill" => kill(dir, &inv.rest),
        other => {
            eprintln!(
                "podckpt-runc: container {} waits to be restored at start; `{other}` is not available until then",
                plan.id.to_string_lossy()
            );
            ExitCode::FAILURE
        }
    })
}

/// Runs `f` with `dir` as the working directory: a socket's path must fit
/// in 108 bytes, and a runtime root plus a 64-character container id may
/// not.
fn in_dir<T>(dir: &Path, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    let back = std::env::current_dir()?;
    std::env::set_current_dir(dir)?;
    let result = f();
    std::env::set_current_dir(back)?;
    result
}

fn read_plan(dir: &Path) -> Result<Plan, String> {
    let path = dir.join(PLAN);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

/// The holder's pid, if it still runs.
fn holder_pid(dir: &Path) -> Option<Pid> {
    let pid: i32 = std::fs::read_to_string(dir.join(HOLDER_PID)).ok()?.trim().parse().ok()?;
    let pid = Pid::from_raw(pid);
    signal::kill(pid, None).is_ok().then_some(pid)
}

/// runc's `state` of a created container (or of one whose holder has gone:
/// stopped), in runc's JSON.
fn state(dir: &Path, plan: &Plan) -> ExitCode {
    let holder = holder_pid(dir);
    let annotations = super::read_spec(&plan.bundle)
        .map(|spec| spec["annotations"].clone())
        .unwrap_or_default();
    let state = serde_json::json!({
        "ociVersion": "1.0.2",
        "id": plan.id.to_string_lossy(),
        "pid": holder.map_or(0, Pid::as_raw),
        "status": if holder.is_some() { "created" } else { "stopped" },
        "bundle": plan.bundle,
        "rootfs": plan.bundle.join("rootfs"),
        "created": plan.created,
        "owner": "",
        "annotations": annotations,
    });
    println!("{}", serde_json::to_string_pretty(&state).unwrap_or_default());
    ExitCode::SUCCESS
}

/// `start`: the holder restores, and answers when it is done.
fn start(dir: &Path, plan: &Plan) -> ExitCode {
    let answer = in_dir(dir, || UnixStream::connect(SOCKET)).and_then(|mut stream| {
        stream.write_all(b"start\n")?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        Ok(line)
    });
    match answer.as_deref().map(str::trim_end) {
        Ok("ok") => ExitCode::SUCCESS,
        Ok(line) => {
            let why = line.strip_prefix("error: ").unwrap_or("the holder ended without an answer");
            eprintln!("podckpt-runc: restoring {}: {why}", plan.id.to_string_lossy());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!(
                "podckpt-runc: container {} cannot be started: its restore holder is gone ({e})",
                plan.id.to_string_lossy()
            );
            ExitCode::FAILURE
        }
    }
}

/// `kill [--all] ID SIGNAL` of a created container signals its holder, as
/// runc signals its `runc init`.
fn kill(dir: &Path, rest: &[OsString]) -> ExitCode {
    let positional: Vec<&str> = rest
        .iter()
        .filter_map(|a| a.to_str())
        .filter(|a| !a.starts_with('-'))
        .collect();
    let name = positional.get(1).copied().unwrap_or("TERM");
    let Some(sig) = parse_signal(name) else {
        eprintln!("podckpt-runc: unknown signal {name:?}");
        return ExitCode::FAILURE;
    };
    match holder_pid(dir) {
        Some(pid) if signal::kill(pid, sig).is_ok() => ExitCode::SUCCESS,
        // The shims treat runc's wording as "already gone".
        _ => {
            eprintln!("container not running");
            ExitCode::FAILURE
        }
    }
}

fn parse_signal(name: &str) -> Option<Signal> {
    if let Ok(number) = name.parse::<i32>() {
        return Signal::try_from(number).ok();
    }
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    full.parse().ok()
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> InterposerError + '_ {
    move |e| InterposerError::Io(format!("{}: {e}", path.display()))
}

/// The holder's main: `podckpt-runc podckpt-restore-holder DIR`, with its
/// listening socket on LISTENER_FD and the container's stdio on 0, 1, 2.
pub fn hold(args: &[OsString]) -> ExitCode {
    let [dir] = args else {
        eprintln!("usage: podckpt-runc {HOLDER_COMMAND} DIR");
        return ExitCode::from(255);
    };
    let dir = Path::new(dir);
    // The restored process is reparented here when the runtime's restore
    // exits, so that its exit is ours to see.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("podckpt-runc: restore holder: becoming a subreaper: {e}");
        return ExitCode::from(255);
    }
    // SAFETY: the parent put the listening socket there for us alone.
    let listener = UnixListener::from(unsafe { OwnedFd::from_raw_fd(LISTENER_FD) });
    // Nothing the restore runs (the runtime, CRIU, the restored process)
    // may inherit it.
    let _ = nix::fcntl::fcntl(&listener, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    let plan = match read_plan(dir) {
        Ok(plan) => plan,
        Err(why) => {
            eprintln!("podckpt-runc: restore holder: {why}");
            return ExitCode::from(255);
        }
    };
    // Only `start` connects; a connection that says anything else (or
    // nothing) is ignored.
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut line = String::new();
        if BufReader::new(&stream).read_line(&mut line).is_err() || line.trim_end() != "start" {
            continue;
        }
        let init = restore(dir, &plan);
        let answer = match &init {
            Ok(_) => "ok".to_owned(),
            Err(why) => format!("error: {}", why.replace('\n', " ")),
        };
        let _ = writeln!(stream, "{answer}");
        drop(stream);
        drop(listener);
        return match init {
            Ok(init) => {
                release_stdio();
                wait_for(init)
            }
            Err(_) => ExitCode::from(255),
        };
    }
    ExitCode::from(255)
}

/// Restores the container through the token's backend; the restored init's pid.
fn restore(dir: &Path, plan: &Plan) -> Result<Pid, String> {
    let token = RestoreToken::load_trusted(&plan.token).map_err(|e| e.to_string())?;
    let spec = super::read_spec(&plan.bundle).map_err(|e| e.to_string())?;
    token.check_issued_for(&spec, &plan.token).map_err(|e| e.to_string())?;
    let backend = backend::for_handler(&token.backend, &plan.runtime, &plan.root)?;
    let pid_file = dir.join(INIT_PID);
    let restored = backend
        .restore(&RestoreRequest {
            checkpoint: &token.checkpoint,
            bundle: &plan.bundle,
            rootfs: &plan.bundle.join(spec["root"]["path"].as_str().unwrap_or("rootfs")),
            global: &plan.global,
            id: &plan.id,
            pid_file: Some(pid_file.as_os_str()),
            console_socket: None,
            no_pivot: plan.no_pivot,
            lazy_pages: token.lazy_pages,
        })
        .map_err(|e| e.to_string())?;
    super::record_restore(&plan.root, &plan.id, &token, restored.engine_seconds);
    // Single use: the same token cannot restore a second container.
    let _ = std::fs::remove_file(&plan.token);
    let pid = std::fs::read_to_string(&pid_file).map_err(|e| format!("{}: {e}", pid_file.display()))?;
    pid.trim()
        .parse()
        .map(Pid::from_raw)
        .map_err(|e| format!("{}: {e}", pid_file.display()))
}

/// The restored process holds the container's stdio now; conmon must see
/// EOF when it ends, not when we do.
fn release_stdio() {
    for (fd, flags) in [
        (0, nix::fcntl::OFlag::O_RDONLY),
        (1, nix::fcntl::OFlag::O_WRONLY),
        (2, nix::fcntl::OFlag::O_WRONLY),
    ] {
        if let Ok(null) = nix::fcntl::open("/dev/null", flags, nix::sys::stat::Mode::empty()) {
            // SAFETY: 0, 1 and 2 stay open for the life of the process; the
            // value is forgotten, never closed.
            let mut target = unsafe { OwnedFd::from_raw_fd(fd) };
            let _ = nix::unistd::dup2(&null, &mut target);
            std::mem::forget(target);
        }
    }
}

/// Reaps whatever is reparented here until `init` ends, then ends the same
/// way: with its exit code, or by its signal.
fn wait_for(init: Pid) -> ExitCode {
    loop {
        match waitpid(None, None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == init => return ExitCode::from(code.clamp(0, 255) as u8),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == init => return die_by(sig),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            // Not our child after all (another subreaper in between): its
            // end is still ours to mirror, without its status.
            Err(_) => return wait_unrelated(init),
        }
    }
}

fn die_by(sig: Signal) -> ExitCode {
    // SAFETY: restoring the default action of a signal in a single-threaded
    // process that is about to end.
    unsafe {
        let _ = signal::signal(sig, signal::SigHandler::SigDfl);
    }
    let _ = signal::kill(Pid::this(), sig);
    // A signal whose default is not to end the process: its number, as a shell does.
    ExitCode::from((128 + sig as i32).clamp(0, 255) as u8)
}

fn wait_unrelated(init: Pid) -> ExitCode {
    while signal::kill(init, None).is_ok() {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    ExitCode::from(255)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("9"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("TERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGTERM"), Some(Signal::SIGTERM));
        assert_eq!(parse_signal("kill"), Some(Signal::SIGKILL));
        assert_eq!(parse_signal("NOPE"), None);
    }

    #[test]
    fn only_a_planned_container_is_held_and_only_for_its_commands() {
        let root = tempfile::tempdir().unwrap();
        let root_flag = root.path().to_str().unwrap();
        let call = |args: &[&str]| {
            let mut all = vec!["--root", root_flag];
            all.extend_from_slice(args);
            holds(&cli::parse(&all.iter().map(OsString::from).collect::<Vec<_>>()))
        };
        assert_eq!(call(&["state", "abc"]), None);
        let dir = pending_dir(root.path(), OsStr::new("abc"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(PLAN), b"{}").unwrap();
        assert_eq!(call(&["state", "abc"]), Some(dir.clone()));
        assert_eq!(call(&["kill", "--all", "abc", "KILL"]), Some(dir.clone()));
        assert_eq!(call(&["delete", "--force", "abc"]), Some(dir));
        assert_eq!(call(&["state", "other"]), None);
        assert_eq!(call(&["exec", "--pid-file", "p", "abc"]), None);
    }
}
