//! Lazy restore. A page daemon serves a restored process's memory through
//! userfaultfd: pages are copied in when the process first touches them,
//! and the daemon pushes the rest in the background, then exits. The daemon
//! is podckpt's own ([`daemon`]), speaking CRIU's lazy-pages protocol.
//! The process runs before its memory is all there, so its life depends on
//! the daemon's: if the daemon dies early, the kernel hands the process a
//! zero-filled page for every page not yet copied, and the process runs on
//! with wrong memory and no error.
//!
//! So the daemon never runs alone. podckpt-runc starts a supervisor (itself,
//! run as [`SUPERVISOR_COMMAND`]) that outlives the `create` the shim ran it
//! for, in its own process group, so that neither the shim nor podckptd
//! takes it down with them. The supervisor starts the daemon, says when its
//! socket is up, learns the restored init's pid once `runc restore` is done,
//! and then watches both:
//! - the daemon exits 0: every page is in; the supervisor exits.
//! - the daemon dies any other way: the container is killed at once and its
//!   log says why. A container must fail loudly, never run on zero pages.
//! - the container ends first (stopped, removed): the daemon is killed.

use std::ffi::OsString;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;

use crate::backend::RestoreError;

mod daemon;
mod pages;
mod uffd;

pub use daemon::{DAEMON_COMMAND, main as daemon_main};

/// The first argument that makes podckpt-runc a lazy-pages supervisor.
pub const SUPERVISOR_COMMAND: &str = "podckpt-lazy-pages-supervisor";
/// The socket the daemon listens on, in the work directory; `runc restore
/// --lazy-pages` with the same work directory connects to it.
const SOCKET: &str = "lazy-pages.socket";
/// The daemon's log, in the work directory.
const DAEMON_LOG: &str = "lazy-pages.log";
/// The supervisor's log, in the work directory.
const SUPERVISOR_LOG: &str = "lazy-pages-supervisor.log";
/// How long the daemon may take to open its socket.
const READY_WITHIN: Duration = Duration::from_secs(10);
/// Below the kubelet's and the runtimes' -999: the OOM killer should take
/// almost anything on the node before the process that a running
/// container's memory depends on.
const OOM_SCORE_ADJ: &str = "-998";

/// One lazy restore's daemon: where its images are, and how to kill the
/// container if the daemon fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub images: PathBuf,
    pub work: PathBuf,
    pub runtime: PathBuf,
    /// The OCI runtime's global flags, as the shim gave them.
    pub global: Vec<OsString>,
    pub id: OsString,
}

impl Plan {
    fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            SUPERVISOR_COMMAND.into(),
            self.images.clone().into(),
            self.work.clone().into(),
            self.runtime.clone().into(),
            self.id.clone(),
        ];
        args.extend(self.global.iter().cloned());
        args
    }

    /// The inverse of `to_args`, without the command itself.
    pub fn from_args(args: &[OsString]) -> Option<Self> {
        let [images, work, runtime, id, global @ ..] = args else {
            return None;
        };
        Some(Self {
            images: images.into(),
            work: work.into(),
            runtime: runtime.into(),
            global: global.to_vec(),
            id: id.clone(),
        })
    }
}

/// podckpt-runc's end of a supervisor it started.
pub struct Supervisor {
    child: Child,
    to: ChildStdin,
}

impl Supervisor {
    /// Starts the supervisor and waits until the daemon listens.
    pub fn start(plan: &Plan) -> Result<Self, RestoreError> {
        let io = |what: &str| {
            let what = what.to_owned();
            move |e: std::io::Error| RestoreError::Io(format!("lazy-pages supervisor: {what}: {e}"))
        };
        let exe = std::env::current_exe().map_err(io("finding podckpt-runc"))?;
        let log = File::create(plan.work.join(SUPERVISOR_LOG)).map_err(io("its log"))?;
        let mut child = Command::new(exe)
            .args(plan.to_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            // Its own group: a signal to the shim's or runc's group must not
            // reach what a running container depends on.
            .process_group(0)
            .spawn()
            .map_err(io("starting it"))?;
        let to = child.stdin.take().expect("piped stdin");
        let from = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(from)
            .read_line(&mut line)
            .map_err(io("reading its answer"))?;
        let supervisor = Self { child, to };
        if line.trim_end() == "ready" {
            return Ok(supervisor);
        }
        supervisor.abort();
        let why = line
            .trim_end()
            .strip_prefix("error: ")
            .unwrap_or("it exited without an answer");
        Err(RestoreError::Io(format!(
            "the lazy-pages daemon did not start: {why} (see {})",
            plan.work.join(DAEMON_LOG).display()
        )))
    }

    /// The restore is done: the supervisor watches `init` from now on.
    pub fn hand_over(mut self, init: i32) -> Result<(), RestoreError> {
        writeln!(self.to, "{init}")
            .map_err(|e| RestoreError::Io(format!("handing the container to the lazy-pages supervisor: {e}")))
    }

    /// The restore failed: the supervisor kills the daemon and exits.
    pub fn abort(mut self) {
        drop(self.to);
        let _ = self.child.wait();
    }
}

/// The supervisor's main: see the module's comment.
pub fn supervise(args: &[OsString]) -> ExitCode {
    let Some(plan) = Plan::from_args(args) else {
        eprintln!("usage: podckpt-runc {SUPERVISOR_COMMAND} IMAGES WORK RUNTIME ID [GLOBAL-FLAGS...]");
        return ExitCode::FAILURE;
    };
    let _ = std::fs::write("/proc/self/oom_score_adj", OOM_SCORE_ADJ);
    let mut daemon = match start_daemon(&plan) {
        Ok(daemon) => daemon,
        Err(why) => {
            println!("error: {why}");
            return ExitCode::FAILURE;
        }
    };
    println!("ready");
    let mut line = String::new();
    let init = match std::io::stdin().lock().read_line(&mut line) {
        Ok(_) => line.trim().parse::<i32>().ok(),
        Err(_) => None,
    };
    let Some(init) = init else {
        // No pid: the restore failed, or podckpt-runc could not read the
        // pid, or it was killed while `runc restore` went on. A container
        // that exists now would run on pages nobody serves.
        if container_exists(&plan) {
            kill_all(&plan);
            eprintln!("the container exists but was never handed over; it was killed");
        } else {
            eprintln!("the restore did not happen");
        }
        stop(&mut daemon);
        return ExitCode::FAILURE;
    };
    let init_fd = match pidfd(init) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(nix::libc::ESRCH) => {
            eprintln!("the container ended before it was watched; the daemon was stopped");
            stop(&mut daemon);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            kill_all(&plan);
            eprintln!("podckpt could not watch the restored container ({e}); it was killed");
            stop(&mut daemon);
            return ExitCode::FAILURE;
        }
    };
    // Opened now, without blocking: once the container is killed its fds
    // are gone, and a pipe whose reader died must not hold up the kill.
    let stderr = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(format!("/proc/{init}/fd/2"))
        .ok();
    let container = Container {
        plan: &plan,
        init_fd,
        stderr,
    };
    match watch(&mut daemon, &container.init_fd) {
        Ok(Outcome::AllPagesIn) => {
            eprintln!("every page is in; the daemon is done");
            ExitCode::SUCCESS
        }
        Ok(Outcome::ContainerEnded) => {
            eprintln!("the container ended before every page was in; the daemon was stopped");
            stop(&mut daemon);
            ExitCode::SUCCESS
        }
        Ok(Outcome::DaemonFailed(status)) => {
            container.fail(&format!("the lazy-pages daemon {}", describe(status)));
            ExitCode::FAILURE
        }
        Err(e) => {
            // Without a way to watch the daemon, the container cannot be
            // trusted to get its pages.
            container.fail(&format!("podckpt could not watch the lazy-pages daemon: {e}"));
            stop(&mut daemon);
            ExitCode::FAILURE
        }
    }
}

fn start_daemon(plan: &Plan) -> Result<Child, String> {
    let socket = plan.work.join(SOCKET);
    // A socket left from an earlier attempt would be taken for this one's.
    let _ = std::fs::remove_file(&socket);
    let exe = std::env::current_exe().map_err(|e| format!("finding podckpt-runc: {e}"))?;
    let log = File::create(plan.work.join(DAEMON_LOG)).map_err(|e| format!("creating its log: {e}"))?;
    let mut daemon = Command::new(exe)
        .arg(DAEMON_COMMAND)
        .arg(&plan.images)
        // Relative, as CRIU connects to it: a bundle's path is longer than
        // a socket's address may be.
        .arg(SOCKET)
        .current_dir(&plan.work)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting the lazy-pages daemon: {e}"))?;
    let _ = std::fs::write(format!("/proc/{}/oom_score_adj", daemon.id()), OOM_SCORE_ADJ);
    let since = Instant::now();
    while !socket.exists() {
        if let Ok(Some(status)) = daemon.try_wait() {
            let log = std::fs::read_to_string(plan.work.join(DAEMON_LOG)).unwrap_or_default();
            return Err(format!("it {}: {}", describe(status), log.trim()));
        }
        if since.elapsed() > READY_WITHIN {
            stop(&mut daemon);
            return Err(format!("it did not listen within {READY_WITHIN:?}"));
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    Ok(daemon)
}

enum Outcome {
    AllPagesIn,
    ContainerEnded,
    DaemonFailed(ExitStatus),
}

fn watch(daemon: &mut Child, init_fd: &OwnedFd) -> std::io::Result<Outcome> {
    let daemon_fd = pidfd(daemon.id() as i32)?;
    loop {
        let mut fds = [
            PollFd::new(daemon_fd.as_fd(), PollFlags::POLLIN),
            PollFd::new(init_fd.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(_) => {}
        }
        let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
        // The daemon first: if both ended, how the daemon ended is the news.
        if ready(&fds[0]) {
            let status = daemon.wait()?;
            return Ok(if status.success() {
                Outcome::AllPagesIn
            } else {
                Outcome::DaemonFailed(status)
            });
        }
        if ready(&fds[1]) {
            return Ok(Outcome::ContainerEnded);
        }
    }
}

/// A pidfd: readable once the process has exited, and never another
/// process's, unlike a pid that may be reused.
fn pidfd(pid: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the fd was just returned to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The restored container, as the supervisor holds it.
struct Container<'a> {
    plan: &'a Plan,
    init_fd: OwnedFd,
    /// The container's stderr, the shim's log pipe: what is written there
    /// reaches `crictl logs` and `kubectl logs`.
    stderr: Option<File>,
}

impl Container<'_> {
    /// Kills the container at once, then says why where its owner will
    /// look: its own log, then the supervisor's.
    fn fail(mut self, why: &str) {
        // Through the pidfd: never another process that took the pid.
        // SAFETY: pidfd_send_signal takes a pidfd, a signal, a null info
        // and flags 0.
        unsafe {
            nix::libc::syscall(
                nix::libc::SYS_pidfd_send_signal,
                self.init_fd.as_raw_fd(),
                nix::libc::SIGKILL,
                std::ptr::null::<nix::libc::siginfo_t>(),
                0,
            );
        }
        // init may not be the only process (a pod-wide PID namespace).
        kill_all(self.plan);
        let message = format!(
            "podckpt: {why} before every page of this lazily restored container was in; the container was killed so that it never runs on memory it does not have\n"
        );
        if let Some(stderr) = &mut self.stderr {
            let _ = stderr.write_all(message.as_bytes());
        }
        eprint!("{message}");
    }
}

/// `RUNTIME kill --all ID KILL`.
fn kill_all(plan: &Plan) {
    let _ = Command::new(&plan.runtime)
        .args(&plan.global)
        .args([OsString::from("kill"), "--all".into(), plan.id.clone(), "KILL".into()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether the runtime knows the container.
fn container_exists(plan: &Plan) -> bool {
    Command::new(&plan.runtime)
        .args(&plan.global)
        .arg("state")
        .arg(&plan.id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn stop(daemon: &mut Child) {
    let _ = daemon.kill();
    let _ = daemon.wait();
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!(
            "was killed by {}",
            Signal::try_from(signal)
                .map(|s| s.as_str().to_owned())
                .unwrap_or_else(|_| signal.to_string())
        ),
        _ => "ended".into(),
    }
}

/// The init pid `runc restore --pid-file` wrote.
pub fn read_pid(pid_file: &Path) -> Result<i32, RestoreError> {
    let text =
        std::fs::read_to_string(pid_file).map_err(|e| RestoreError::Io(format!("{}: {e}", pid_file.display())))?;
    text.trim()
        .parse()
        .map_err(|e| RestoreError::Io(format!("{}: {e}", pid_file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_survives_the_command_line() {
        let plan = Plan {
            images: "/ck/c/checkpoint".into(),
            work: "/b/podckpt-restore".into(),
            runtime: "/usr/sbin/runc".into(),
            global: vec!["--root".into(), "/run/r".into(), "--log-format=json".into()],
            id: "abc".into(),
        };
        let args = plan.to_args();
        assert_eq!(args[0], SUPERVISOR_COMMAND);
        assert_eq!(Plan::from_args(&args[1..]), Some(plan));
        assert_eq!(Plan::from_args(&args[1..4]), None);
    }
}
