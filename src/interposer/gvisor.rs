//! What containerd's runc shim (`io.containerd.runc.v2`) needs from runsc
//! that runsc does not give it, so that gVisor pods run under the CRI with
//! `BinaryName` pointing at `podckpt-runsc`. gVisor's own shim is not
//! packaged here. Each difference was seen in the shim's goroutine dump or
//! runsc's debug log:
//!
//! - **A sub-container's stdio.** `runsc start` hands its own stdio to the
//!   sub-container's process. The shim runs `start` with its output captured
//!   through a pipe and waits for that pipe's EOF, so StartContainer hung
//!   until the container exited and the CRI log stayed empty. Here `start`
//!   runs with the container's stdio instead: the pipes the shim gave
//!   `create`, held meanwhile by a waiter (below).
//! - **A sub-container's pid.** runsc writes the sandbox's pid into every
//!   container's pid file, so the shim, which learns of an exit by reaping
//!   that pid, never saw a sub-container end: StopContainer and
//!   StopPodSandbox timed out. Here the pid file names a waiter, a process of
//!   our own that the shim (a child subreaper) adopts; after `start` it runs
//!   `runsc wait` and exits with the container's status.
//! - **`kill` of a stopped container.** runsc says "sandbox is not running";
//!   the shim only treats runc's "container not running" as already gone, and
//!   retried the sandbox's stop forever. The message is translated.
//! - **Flags.** This runsc's check for the host's network namespace
//!   misfires on this kernel, so `--network=sandbox` cannot run:
//!   `--network=none`. The root overlay's upper layer lives in sandbox memory
//!   (`--overlay2=root:memory`): runsc's default file inside the rootfs kept
//!   the rootfs busy after a failed start, and it is in the checkpoint image
//!   either way. A flag the shim or an operator already gave wins.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use super::cli;
use super::identity::{CriRuntime, SpecIdentity};
use super::token::{self, RestoreToken};
use crate::backend::{self, RestoreRequest};

/// The first argument that makes podckpt-runc a sub-container's waiter.
pub const WAITER_COMMAND: &str = "podckpt-runsc-waiter";
/// runsc flags added unless the call already has them.
const DEFAULT_FLAGS: [(&str, &str); 2] = [("--network", "none"), ("--overlay2", "root:memory")];
/// Where waiters keep their FIFO, under runsc's `--root`, and where a
/// restored container is marked.
const WAITERS: &str = "podckpt-waiters";
/// Left by a `create` that restored, for the `start` that follows.
const RESTORED: &str = "restored";
/// How long a live waiter may take to open its FIFO.
const WAITER_READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
/// Left by the `create` of a container with a terminal.
const TTY: &str = "tty";

/// Whether `runtime` is runsc, which this module adapts.
pub fn adapts(runtime: &Path) -> bool {
    runtime.file_name().is_some_and(|name| name == "runsc")
}

/// The whole of podckpt-runc for runsc.
pub fn main(runtime: &Path, args: &[OsString]) -> ExitCode {
    let inv = cli::parse(args);
    let global = with_default_flags(&inv.global);
    let command = inv.command.as_deref().and_then(OsStr::to_str).unwrap_or_default();
    let runsc = Runsc {
        binary: runtime.to_owned(),
        global,
        root: inv.root.as_ref().map(PathBuf::from),
    };
    let result = match command {
        "create" => runsc.create(&inv.rest),
        "start" => runsc.start(&inv.rest),
        "kill" => runsc.kill(&inv.rest),
        "delete" => {
            if let Some(id) = inv.rest.last() {
                runsc.release_waiter(id);
            }
            Err(runsc.exec(command, &inv.rest))
        }
        _ => Err(runsc.exec(command, &inv.rest)),
    };
    match result {
        Ok(code) => code,
        Err(why) => {
            eprintln!("podckpt-runsc: {why}");
            ExitCode::FAILURE
        }
    }
}

/// The global flags with `DEFAULT_FLAGS` added in front, each unless given.
fn with_default_flags(global: &[OsString]) -> Vec<OsString> {
    let given = |flag: &str| {
        global.iter().any(|arg| {
            let arg = arg.to_string_lossy();
            arg == flag || arg.strip_prefix(flag).is_some_and(|rest| rest.starts_with('='))
        })
    };
    let mut flags: Vec<OsString> = DEFAULT_FLAGS
        .iter()
        .filter(|(flag, _)| !given(flag))
        .map(|(flag, value)| OsString::from(format!("{flag}={value}")))
        .collect();
    flags.extend(global.iter().cloned());
    flags
}

/// runc's wording for a container that is already gone, which the shim
/// maps to NotFound, for runsc's wordings of the same.
fn as_runc_not_running(stderr: &str) -> Option<String> {
    let gone = [
        "is not running",
        "sandbox is not running",
        "stopped",
        "in state created",
    ];
    gone.iter()
        .any(|phrase| stderr.contains(phrase))
        .then(|| format!("container not running ({})", stderr.trim()))
}

struct Runsc {
    binary: PathBuf,
    global: Vec<OsString>,
    root: Option<PathBuf>,
}

impl Runsc {
    fn command(&self, command: &str, args: &[OsString]) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.global).arg(command).args(args);
        cmd
    }

    /// Replaces this process with runsc; returns only why it could not.
    fn exec(&self, command: &str, args: &[OsString]) -> String {
        let err = self.command(command, args).exec();
        format!("exec {}: {err}", self.binary.display())
    }

    fn waiter_dir(&self, id: &OsStr) -> Option<PathBuf> {
        Some(self.root.as_ref()?.join(WAITERS).join(id))
    }

    fn create(&self, rest: &[OsString]) -> Result<ExitCode, String> {
        let create = cli::parse_create(rest).ok_or("create without a container id")?;
        let bundle = PathBuf::from(create.bundle.clone().unwrap_or_else(|| ".".into()));
        let spec = super::read_spec(&bundle).map_err(|e| e.to_string())?;
        let sub_container = CriRuntime::of(&spec) != CriRuntime::Unknown && !SpecIdentity::of(&spec).is_sandbox;
        // Pod annotations reach every container too, so each kind has its key.
        let key = if sub_container {
            token::ANNOTATION
        } else {
            token::SANDBOX_ANNOTATION
        };
        let token = spec["annotations"][key].as_str().map(PathBuf::from);
        match (sub_container, token) {
            (false, None) => Err(self.exec("create", rest)),
            (false, Some(token)) => {
                self.restore(&token, &spec, &create, &bundle)?;
                Ok(ExitCode::SUCCESS)
            }
            (true, None) => {
                let status = self
                    .command("create", rest)
                    .status()
                    .map_err(|e| format!("running {}: {e}", self.binary.display()))?;
                if !status.success() {
                    return Ok(exit_code(status));
                }
                self.start_waiter(&create)
            }
            (true, Some(token)) => {
                self.restore(&token, &spec, &create, &bundle)?;
                self.start_waiter(&create)
            }
        }
    }

    /// Brings the sandbox or a container back from the image the trusted
    /// token names, through the token's backend, and marks it so that the
    /// `start` that follows starts nothing.
    fn restore(
        &self,
        token_path: &Path,
        spec: &serde_json::Value,
        create: &cli::Create,
        bundle: &Path,
    ) -> Result<(), String> {
        let token = RestoreToken::load_trusted(token_path).map_err(|e| e.to_string())?;
        token.check_issued_for(spec, token_path).map_err(|e| e.to_string())?;
        let backend = backend::for_handler(
            &token.backend,
            &self.binary,
            self.root.as_deref().unwrap_or(Path::new("")),
        )?;
        let dir = self
            .waiter_dir(&create.id)
            .ok_or("runsc's --root is needed to keep a restored container's state")?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let restored = backend
            .restore(&RestoreRequest {
                checkpoint: &token.checkpoint,
                bundle,
                rootfs: &bundle.join(spec["root"]["path"].as_str().unwrap_or("rootfs")),
                global: &self.global,
                id: &create.id,
                pid_file: create.pid_file.as_deref(),
                console_socket: create.console_socket.as_deref(),
                no_pivot: create.no_pivot,
                lazy_pages: token.lazy_pages,
            })
            .map_err(|e| e.to_string())?;
        let record = serde_json::json!({
            "checkpoint": token.checkpoint,
            "runtime_restore_seconds": restored.engine_seconds,
        });
        std::fs::write(dir.join(super::RESTORE_RECORD), record.to_string())
            .and_then(|()| std::fs::write(dir.join(RESTORED), b""))
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        // Single use.
        let _ = std::fs::remove_file(token_path);
        Ok(())
    }

    /// A waiter for a sub-container that `create` made (or restored): its
    /// pid goes into the pid file, for the shim to reap.
    fn start_waiter(&self, create: &cli::Create) -> Result<ExitCode, String> {
        // With a terminal the shim passes no stdio, and what it gave us is
        // its capture pipe of our output, which it reads to EOF: a waiter
        // holding it would hang this very `create`.
        let tty = create.console_socket.is_some();
        let dir = self
            .waiter_dir(&create.id)
            .ok_or("runsc's --root is needed to keep a sub-container's waiter")?;
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let fifo = dir.join("go");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR)
            .map_err(|e| format!("{}: {e}", fifo.display()))?;
        // The waiter keeps our stdio, which is the container's, for `start`.
        let exe = std::env::current_exe().map_err(|e| format!("finding podckpt-runc: {e}"))?;
        let mut waiter = Command::new(exe);
        waiter
            .arg(WAITER_COMMAND)
            .arg(&fifo)
            .arg(&self.binary)
            .args([
                "--root".as_ref(),
                self.root.as_deref().unwrap_or(Path::new("")).as_os_str(),
            ])
            .arg(&create.id)
            .process_group(0);
        if tty {
            waiter.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
            std::fs::write(dir.join(TTY), b"").map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        let waiter = waiter.spawn().map_err(|e| format!("starting the waiter: {e}"))?;
        std::fs::write(dir.join("pid"), waiter.id().to_string()).map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Some(pid_file) = &create.pid_file {
            // What the shim reaps: the waiter, not the sandbox runsc wrote.
            let pid_file = Path::new(pid_file);
            let staged = pid_file.with_extension("podckpt");
            std::fs::write(&staged, waiter.id().to_string())
                .and_then(|()| std::fs::rename(&staged, pid_file))
                .map_err(|e| format!("{}: {e}", pid_file.display()))?;
        }
        Ok(ExitCode::SUCCESS)
    }

    fn start(&self, rest: &[OsString]) -> Result<ExitCode, String> {
        let Some(id) = rest.last() else {
            return Err(self.exec("start", rest));
        };
        let dir = self.waiter_dir(id);
        let waiter = dir.as_deref().and_then(read_waiter);
        if let Some(marker) = dir.map(|d| d.join(RESTORED))
            && std::fs::remove_file(&marker).is_ok()
        {
            // Restored at `create`: its processes are back; a sub-container's
            // waiter only has to start waiting.
            if let Some(waiter) = waiter {
                signal_waiter(&waiter, "start")?;
            }
            return Ok(ExitCode::SUCCESS);
        }
        let Some(waiter) = waiter else {
            return Err(self.exec("start", rest));
        };
        let fd = |n: u32, write: bool| {
            if waiter.tty {
                // The process's stdio is its terminal; ours is the shim's
                // capture pipe, which nothing may keep open.
                return Ok(Stdio::null());
            }
            let path = format!("/proc/{}/fd/{n}", waiter.pid);
            std::fs::OpenOptions::new()
                .read(!write)
                .write(write)
                .open(&path)
                .map(Stdio::from)
                .map_err(|e| format!("the container's stdio {path}: {e}"))
        };
        let status = self
            .command("start", rest)
            .stdin(fd(0, false)?)
            .stdout(fd(1, true)?)
            .stderr(fd(2, true)?)
            .status()
            .map_err(|e| format!("running {}: {e}", self.binary.display()))?;
        if status.success() {
            signal_waiter(&waiter, "start")?;
        }
        Ok(exit_code(status))
    }

    fn kill(&self, rest: &[OsString]) -> Result<ExitCode, String> {
        let out = self
            .command("kill", rest)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running {}: {e}", self.binary.display()))?;
        let _ = std::io::stdout().write_all(&out.stdout);
        self.kill_incomplete_sandbox(rest);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success()
            && let Some(message) = as_runc_not_running(&stderr)
        {
            eprintln!("{message}");
        } else {
            eprint!("{stderr}");
        }
        Ok(exit_code(out.status))
    }

    /// A restored sandbox waits, stopped, until every container of its image
    /// is registered; `runsc kill` reaches no process then, and the shim
    /// would wait for its exit forever (a pod restored and removed before
    /// all its containers started, or a RestorePod undone). A KILL of a
    /// restored sandbox therefore kills the sandbox process itself.
    fn kill_incomplete_sandbox(&self, rest: &[OsString]) {
        let positional: Vec<&OsString> = rest.iter().filter(|a| !a.to_string_lossy().starts_with('-')).collect();
        let [id, signal] = positional[..] else { return };
        if !matches!(signal.to_str(), Some("9" | "KILL" | "SIGKILL")) {
            return;
        }
        let Some(dir) = self.waiter_dir(id) else { return };
        // Restored (a record) and a sandbox (no waiter of its own).
        if !dir.join(super::RESTORE_RECORD).exists() || dir.join("pid").exists() {
            return;
        }
        let pid = self
            .command("state", std::slice::from_ref(id))
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .and_then(|out| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
            .and_then(|state| state["pid"].as_i64());
        if let Some(pid) = pid.filter(|pid| *pid > 1) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// A waiter whose container never started ends now; its FIFO goes.
    fn release_waiter(&self, id: &OsStr) {
        let Some(dir) = self.waiter_dir(id) else { return };
        if let Some(waiter) = read_waiter(&dir) {
            let _ = signal_waiter(&waiter, "delete");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

struct Waiter {
    pid: u32,
    fifo: PathBuf,
    tty: bool,
}

fn read_waiter(dir: &Path) -> Option<Waiter> {
    let pid = std::fs::read_to_string(dir.join("pid")).ok()?.trim().parse().ok()?;
    Some(Waiter {
        pid,
        fifo: dir.join("go"),
        tty: dir.join(TTY).exists(),
    })
}

/// Tells a waiter what happened. Non-blocking: a waiter that is gone has
/// no reader on its FIFO, and nobody must hang on it. A waiter that is
/// alive but has not opened its FIFO yet (just started, on a busy node) is
/// given a moment.
fn signal_waiter(waiter: &Waiter, word: &str) -> Result<(), String> {
    let open = || {
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(nix::libc::O_NONBLOCK)
            .open(&waiter.fifo)
    };
    let since = std::time::Instant::now();
    let mut pipe = loop {
        match open() {
            Err(e)
                if e.raw_os_error() == Some(nix::libc::ENXIO)
                    && Path::new(&format!("/proc/{}", waiter.pid)).exists()
                    && since.elapsed() < WAITER_READY_WITHIN =>
            {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            other => break other.map_err(|e| format!("the waiter's FIFO {}: {e}", waiter.fifo.display()))?,
        }
    };
    writeln!(pipe, "{word}").map_err(|e| format!("the waiter's FIFO {}: {e}", waiter.fifo.display()))
}

fn exit_code(status: std::process::ExitStatus) -> ExitCode {
    ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8)
}

/// The waiter's main: `podckpt-runc podckpt-runsc-waiter FIFO RUNSC --root ROOT ID`.
/// Blocks until `start` or `delete` writes to the FIFO; after `start`, lets
/// go of the container's stdio and exits as the container does.
pub fn wait(args: &[OsString]) -> ExitCode {
    let [fifo, runsc, root_flag, root, id] = args else {
        eprintln!("usage: podckpt-runc {WAITER_COMMAND} FIFO RUNSC --root ROOT ID");
        return ExitCode::from(255);
    };
    // Opening for reading blocks until `start` or `delete` opens it.
    let word = File::open(fifo)
        .ok()
        .and_then(|f| BufReader::new(f).lines().next())
        .and_then(Result::ok)
        .unwrap_or_default();
    if word != "start" {
        return ExitCode::from(255);
    }
    // The sandbox holds the container's stdio now; the shim must see EOF on
    // it when the container ends, not when we do.
    for (fd, flags) in [
        (0, nix::fcntl::OFlag::O_RDONLY),
        (1, nix::fcntl::OFlag::O_WRONLY),
        (2, nix::fcntl::OFlag::O_WRONLY),
    ] {
        if let Ok(null) = nix::fcntl::open("/dev/null", flags, nix::sys::stat::Mode::empty()) {
            let mut target = unsafe_fd(fd);
            let _ = nix::unistd::dup2(&null, &mut target);
            std::mem::forget(target);
        }
    }
    let out = Command::new(runsc)
        .args([root_flag, root])
        .arg("wait")
        .arg(id)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let status = out
        .ok()
        .and_then(|out| serde_json::from_slice::<serde_json::Value>(&out.stdout).ok())
        .and_then(|v| v["exitStatus"].as_i64())
        .unwrap_or(255);
    ExitCode::from((status & 255) as u8)
}

/// One of our own standard descriptors, to be replaced by `dup2`.
fn unsafe_fd(fd: i32) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: 0, 1 and 2 are open for the life of the process; the caller
    // forgets the value instead of closing it.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    #[test]
    fn default_flags_go_first_unless_given() {
        let flags = with_default_flags(&os(&["--root", "/r", "--log-format", "json"]));
        assert_eq!(
            flags,
            os(&[
                "--network=none",
                "--overlay2=root:memory",
                "--root",
                "/r",
                "--log-format",
                "json"
            ])
        );
        let flags = with_default_flags(&os(&["--network=host", "--overlay2", "none"]));
        assert_eq!(
            flags,
            os(&["--network=host", "--overlay2", "none"]),
            "an operator's choice wins"
        );
    }

    #[test]
    fn runsc_gone_reads_as_runc_gone() {
        assert_eq!(
            as_runc_not_running("sandbox is not running\n").as_deref(),
            Some("container not running (sandbox is not running)")
        );
        assert!(as_runc_not_running("permission denied").is_none());
    }

    #[test]
    fn only_runsc_is_adapted() {
        assert!(adapts(Path::new("/usr/bin/runsc")));
        assert!(!adapts(Path::new("/usr/sbin/runc")));
    }
}
