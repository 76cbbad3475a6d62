//! systemd's readiness protocol (`Type=notify`): podckptd is ready only
//! once its socket is bound and the runtime below has answered, so that a
//! kubelet ordered after it never starts against a shim that can only say
//! UNAVAILABLE. Outside systemd (no `NOTIFY_SOCKET`) every call is a no-op.

use std::path::PathBuf;
use std::time::Duration;

use sd_notify::NotifyState;
use tracing::{debug, info, warn};

use crate::api::cri::VersionRequest;

/// How long each attempt to reach the runtime may take, and the most time
/// between two of them.
const ATTEMPT: Duration = Duration::from_secs(2);
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// Waits until the runtime at `socket` answers Version, then reports ready,
/// with the runtime's name and version as the unit's status line. Call it
/// once the listening socket is bound.
pub async fn notify_when_runtime_answers(socket: PathBuf) {
    let mut client = crate::cri_client::runtime(&socket);
    let mut pause = Duration::from_millis(50);
    let version = loop {
        let mut request = tonic::Request::new(VersionRequest::default());
        request.set_timeout(ATTEMPT);
        match tokio::time::timeout(ATTEMPT, client.version(request)).await {
            Ok(Ok(answer)) => break answer.into_inner(),
            Ok(Err(status)) => debug!(code = ?status.code(), message = status.message(), "runtime not answering yet"),
            Err(_) => debug!("runtime not answering yet: no answer within 2 s"),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_PAUSE);
    };
    let status = format!(
        "serving, in front of {} {}",
        version.runtime_name, version.runtime_version
    );
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
    info!(runtime = %version.runtime_name, version = %version.runtime_version, "ready");
}

/// Tells systemd that podckptd is draining its calls before it exits.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining calls")]);
}

/// Pets systemd's watchdog at half its interval, when the unit sets
/// `WatchdogSec=`. On the daemon's one thread, a stuck event loop stops
/// the petting, and systemd restarts it.
pub async fn watchdog() {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return std::future::pending().await;
    };
    let mut tick = tokio::time::interval(interval / 2);
    loop {
        tick.tick().await;
        send(&[NotifyState::Watchdog]);
    }
}

fn send(state: &[NotifyState<'_>]) {
    if let Err(error) = sd_notify::notify(state) {
        warn!(%error, "could not notify systemd");
    }
}
