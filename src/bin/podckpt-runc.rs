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
        Action::Restore { create, token } => report(&create, interposer::restore(&runtime, &inv, &create, &token)),
        Action::RestoreHeld { create, token } => {
            report(&create, interposer::restore_held(&runtime, &inv, &create, &token))
        }
        Action::CreateAbovePidFloor { create, floor } => report(
            &create,
            interposer::pid_floor::create(&runtime, &args, &inv, &create, floor),
        ),
    }
}

fn report(create: &cli::Create, result: Result<(), interposer::InterposerError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The runtime has reported its own failure; its exit code stands.
        Err(interposer::InterposerError::Runtime(status)) => {
            ExitCode::from(status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1))
        }
        Err(err) => {
            eprintln!("podckpt-runc: restoring {}: {err}", create.id.to_string_lossy());
            ExitCode::FAILURE
        }
    }
}
