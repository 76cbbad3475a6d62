//! podckpt-runc: an OCI runtime wrapper; see `podckpt::interposer`.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use podckpt::interposer::{self, Action, cli};

fn main() -> ExitCode {
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    let args: Vec<_> = args.collect();
    if args
        .first()
        .is_some_and(|a| a == podckpt::backend::runc::lazy::SUPERVISOR_COMMAND)
    {
        return podckpt::backend::runc::lazy::supervise(&args[1..]);
    }
    if args
        .first()
        .is_some_and(|a| a == podckpt::backend::runc::lazy::DAEMON_COMMAND)
    {
        return podckpt::backend::runc::lazy::daemon_main(&args[1..]);
    }
    if args.first().is_some_and(|a| a == interposer::gvisor::WAITER_COMMAND) {
        return interposer::gvisor::wait(&args[1..]);
    }
    let Some(runtime) = interposer::real_runtime(&argv0) else {
        eprintln!("podckpt-runc: cannot find the real OCI runtime; set PODCKPT_REAL_RUNTIME");
        return ExitCode::from(127);
    };
    if interposer::gvisor::adapts(&runtime) {
        return interposer::gvisor::main(&runtime, &args);
    }
    let inv = cli::parse(&args);
    let action = match interposer::decide(&inv) {
        Ok(action) => action,
        Err(err) => {
            eprintln!("podckpt-runc: {err}");
            return ExitCode::FAILURE;
        }
    };
    let pass_through = || {
        // exec only returns on failure.
        let err = Command::new(&runtime).args(&args).exec();
        eprintln!("podckpt-runc: exec {}: {err}", runtime.display());
        ExitCode::from(127)
    };
    match action {
        Action::PassThrough => pass_through(),
        Action::Held { marker } => interposer::held::command(&runtime, &inv, &marker),
        Action::AlreadyStarted { marker } => {
            let _ = std::fs::remove_file(marker);
            ExitCode::SUCCESS
        }
        Action::Restore { create, token } => {
            report(&inv, &create, interposer::restore(&runtime, &inv, &create, &token))
        }
        Action::RestoreHeld { create, token } => {
            report(&inv, &create, interposer::restore_held(&runtime, &inv, &create, &token))
        }
        Action::CreateAbovePidFloor { create, floor } => report(
            &inv,
            &create,
            interposer::pid_floor::create(&runtime, &args, &inv, &create, floor),
        ),
    }
}

/// The outcome as the shim sees it: the exit code, and our reason on
/// stderr and as the runtime log's last error, which is what containerd's
/// runc shim puts in its answer (the kubelet's event), where runc's own
/// last words ("container does not exist") would say nothing.
fn report(inv: &cli::Invocation, create: &cli::Create, result: Result<(), interposer::InterposerError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The runtime has reported its own failure; its exit code stands.
        Err(interposer::InterposerError::Runtime(status)) => {
            ExitCode::from(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1))
        }
        Err(err) => {
            let message = format!("podckpt-runc: restoring {}: {err}", create.id.to_string_lossy());
            eprintln!("{message}");
            cli::log_error(inv, &message);
            ExitCode::FAILURE
        }
    }
}
