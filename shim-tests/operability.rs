//! What an operator sees of podckptd on a node: every call's status in its
//! log and in its metrics, and systemd's readiness protocol.

use std::time::Duration;

use podckpt::api::cri;
use serde_json::Value;
use tonic::Code;

use crate::support::{self, Shim, Testbed, checkpoint_pod_exactly, eventually};

on_each_runtime!(every_call_is_logged_with_its_status, metrics_count_what_was_done);

/// ContainerStatus of a container nobody made: NOT_FOUND, passed through.
async fn status_of_an_unknown_container(client: &mut support::Runtime) {
    let missing = client
        .container_status(cri::ContainerStatusRequest {
            container_id: "no-such-container".into(),
            verbose: false,
        })
        .await
        .expect_err("an unknown container");
    assert_eq!(missing.code(), Code::NotFound);
}

/// The first line logged with these fields, if any.
fn line_with(shim: &Shim, fields: &[(&str, &str)]) -> Option<Value> {
    shim.log_lines()
        .into_iter()
        .find(|line| fields.iter().all(|(k, v)| line[*k].as_str() == Some(*v)))
}

async fn every_call_is_logged_with_its_status(tb: Testbed) {
    let shim = Shim::start_logging(&tb, "podckpt=debug");
    let mut client = shim.client().await;
    status_of_an_unknown_container(&mut client).await;
    client.version(cri::VersionRequest::default()).await.expect("Version");
    let (_parent, out) = support::empty_output("ckpt");
    let refused = checkpoint_pod_exactly(&shim, "no-such-pod", &out, vec!["c".into()], &[])
        .await
        .expect_err("an unknown pod");
    assert_eq!(refused.code(), Code::NotFound);

    // The line is written once the answer is out.
    let logged = eventually(Duration::from_secs(5), || async {
        line_with(&shim, &[("message", "pod call failed")]).is_some()
    })
    .await;
    assert!(logged, "no pod call in the log: {:?}", shim.log_lines());

    let passed = line_with(
        &shim,
        &[
            ("method", "/runtime.v1.RuntimeService/ContainerStatus"),
            ("code", "NOT_FOUND"),
            ("level", "DEBUG"),
        ],
    )
    .unwrap_or_else(|| panic!("the passed-through NOT_FOUND is not in the log: {:?}", shim.log_lines()));
    assert!(passed["elapsed_us"].as_u64().is_some(), "{passed}");
    assert!(
        line_with(
            &shim,
            &[("method", "/runtime.v1.RuntimeService/Version"), ("code", "OK")]
        )
        .is_some(),
        "{:?}",
        shim.log_lines()
    );
    let failed = line_with(&shim, &[("message", "pod call failed"), ("code", "NOT_FOUND")])
        .unwrap_or_else(|| panic!("the failed pod call is not logged at info: {:?}", shim.log_lines()));
    assert_eq!(failed["level"], "INFO");
    assert!(
        failed["method"].as_str().unwrap().ends_with("/CheckpointPod"),
        "{failed}"
    );
    assert!(
        failed["grpc_message"]
            .as_str()
            .is_some_and(|m| m.contains("no-such-pod")),
        "the status message is logged: {failed}"
    );
}

/// A podckptd started by hand, killed if the test ends early.
struct Daemon(Option<std::process::Child>);

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The next datagram on systemd's notify socket, within `limit`.
fn notified(socket: &std::os::unix::net::UnixDatagram, limit: Duration) -> Option<String> {
    socket.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    socket
        .recv(&mut buf)
        .ok()
        .map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// systemd itself need not run: the test is the notify socket's listener.
#[tokio::test]
#[serial_test::serial]
async fn systemd_hears_ready_only_once_the_runtime_answers_and_stopping_on_sigterm() {
    let Some(tb) = support::testbed() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let notify = std::os::unix::net::UnixDatagram::bind(dir.path().join("notify")).unwrap();
    // The runtime's socket is not there yet.
    let runtime = dir.path().join("runtime.sock");
    let socket = dir.path().join("podckpt.sock");
    std::fs::write(dir.path().join("config.toml"), "").unwrap();
    let mut daemon = Daemon(Some(
        support::unit::podckptd()
            .arg("--listen")
            .arg(&socket)
            .arg("--runtime-endpoint")
            .arg(format!("unix://{}", runtime.display()))
            .arg("--config")
            .arg(dir.path().join("config.toml"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--log-level", "warn"])
            .env("NOTIFY_SOCKET", dir.path().join("notify"))
            .spawn()
            .expect("starting podckptd"),
    ));
    let bound = eventually(Duration::from_secs(10), || async {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    })
    .await;
    assert!(bound, "podckptd did not bind its socket");
    if let Some(early) = notified(&notify, Duration::from_millis(1500)) {
        panic!("systemd was told {early:?} before the runtime answered");
    }

    std::os::unix::fs::symlink(&tb.socket, &runtime).unwrap();
    let ready = notified(&notify, Duration::from_secs(10)).expect("no READY once the runtime is there");
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains("STATUS=serving, in front of containerd"), "{ready:?}");

    let child = daemon.0.as_mut().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let stopping = notified(&notify, Duration::from_secs(5)).expect("no STOPPING on SIGTERM");
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(daemon.0.take().unwrap().wait().unwrap().success());
}

/// Every file of a checkpoint directory, in bytes.
fn bytes_in(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                bytes_in(&entry.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

async fn metrics_count_what_was_done(tb: Testbed) {
    let shim = Shim::start_with_metrics(&tb);
    let mut client = shim.client().await;
    for _ in 0..3 {
        client.version(cri::VersionRequest::default()).await.expect("Version");
    }
    for _ in 0..2 {
        status_of_an_unknown_container(&mut client).await;
    }
    let (_parent, out) = support::empty_output("ckpt");
    let refused = checkpoint_pod_exactly(&shim, "no-such-pod", &out, vec![], &[])
        .await
        .expect_err("an empty container list");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let counter = support::container_config("counter", &tb.image, support::COUNTER);
    let (_keep, checkpoint, _) = support::checkpointed(&shim, "", counter, 1).await;
    let (_restored, _cid) = support::restore_and_start(&shim, &checkpoint, "counter").await;

    let metrics = shim.metrics().await;
    let text = &metrics.0;
    let checkpoint_pod = r#"method="/runtime.v1.RuntimeService/CheckpointPod""#;
    let restore_pod = r#"method="/runtime.v1.RuntimeService/RestorePod""#;
    for (series, expected) in [
        (
            r#"podckpt_passthrough_calls_total{method="/runtime.v1.RuntimeService/Version",code="OK"}"#.to_owned(),
            3.0,
        ),
        (
            r#"podckpt_passthrough_calls_total{method="/runtime.v1.RuntimeService/ContainerStatus",code="NOT_FOUND"}"#
                .to_owned(),
            2.0,
        ),
        (
            r#"podckpt_passthrough_call_duration_seconds_count{method="/runtime.v1.RuntimeService/Version"}"#
                .to_owned(),
            3.0,
        ),
        // The pod that was checkpointed, and the sandbox of the restored one,
        // which RestorePod made itself: only the first passed through.
        (
            r#"podckpt_passthrough_calls_total{method="/runtime.v1.RuntimeService/RunPodSandbox",code="OK"}"#
                .to_owned(),
            1.0,
        ),
        (
            format!(r#"podckpt_pod_calls_total{{{checkpoint_pod},code="INVALID_ARGUMENT"}}"#),
            1.0,
        ),
        (format!(r#"podckpt_pod_calls_total{{{checkpoint_pod},code="OK"}}"#), 1.0),
        (format!(r#"podckpt_pod_calls_total{{{restore_pod},code="OK"}}"#), 1.0),
        (
            format!("podckpt_pod_call_duration_seconds_count{{{checkpoint_pod}}}"),
            2.0,
        ),
        (format!("podckpt_pod_call_duration_seconds_count{{{restore_pod}}}"), 1.0),
        // Both ended: none is under way, nothing stays paused.
        (format!("podckpt_pod_calls_in_progress{{{checkpoint_pod}}}"), 0.0),
        (format!("podckpt_pod_calls_in_progress{{{restore_pod}}}"), 0.0),
        ("podckpt_paused_containers".to_owned(), 0.0),
        // One freeze, one verification, one checkpoint written: the refused
        // call got no further than its arguments.
        ("podckpt_checkpoint_freeze_duration_seconds_count".to_owned(), 1.0),
        ("podckpt_restore_verification_duration_seconds_count".to_owned(), 1.0),
        ("podckpt_checkpoint_written_bytes_count".to_owned(), 1.0),
        (
            "podckpt_checkpoint_written_bytes_sum".to_owned(),
            bytes_in(&checkpoint) as f64,
        ),
        ("podckpt_runtime_reconnects_total".to_owned(), 0.0),
        ("podckpt_journal_recovered_entries_total".to_owned(), 0.0),
    ] {
        assert_eq!(metrics.get(&series), expected, "{series} in:\n{text}");
    }
    let freeze = metrics.get("podckpt_checkpoint_freeze_duration_seconds_sum");
    let total = metrics.get(&format!("podckpt_pod_call_duration_seconds_sum{{{checkpoint_pod}}}"));
    assert!(
        freeze > 0.0 && freeze < total,
        "freeze {freeze} s within the calls' {total} s"
    );
    assert_eq!(text.matches("podckpt_pod_calls_total{").count(), 3, "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}

/// Every daemon the tests start runs as the unit confines it, so that the
/// whole suite shows runc, CRIU and runsc still work under the unit's
/// hardening. This checks the confinement really applies.
#[tokio::test]
#[serial_test::serial]
async fn the_daemon_runs_under_the_units_hardening() {
    let Some(tb) = support::testbed() else {
        return;
    };
    let hardening = support::unit::hardening(support::unit::PODCKPTD);
    assert!(hardening.no_new_privileges, "the unit sets NoNewPrivileges=yes");
    assert!(hardening.dropped.contains(&"sys_module".to_owned()), "{hardening:?}");
    let shim = Shim::start(&tb);
    let status = std::fs::read_to_string(format!("/proc/{}/status", shim.pid())).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    assert_eq!(field("NoNewPrivs:"), "1");
    let decode = |set: &str| -> Vec<String> {
        let decoded = std::process::Command::new("capsh")
            .arg(format!("--decode={}", field(set)))
            .output()
            .expect("capsh (libcap2-bin)");
        let decoded = String::from_utf8_lossy(&decoded.stdout);
        match decoded.trim().split_once('=') {
            Some((_, caps)) => caps.split(',').map(str::to_owned).collect(),
            None => Vec::new(),
        }
    };
    // What it may use, not only what it may gain.
    for set in ["CapBnd:", "CapPrm:", "CapEff:", "CapInh:"] {
        let caps = decode(set);
        for cap in &hardening.dropped {
            assert!(
                !caps.contains(&format!("cap_{cap}")),
                "{cap} is still in {set} {caps:?}"
            );
        }
    }
    let effective = decode("CapEff:");
    for needed in [
        "cap_sys_admin",
        "cap_sys_ptrace",
        "cap_checkpoint_restore",
        "cap_net_admin",
    ] {
        assert!(
            effective.iter().any(|c| c == needed),
            "CRIU needs {needed}: {effective:?}"
        );
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", shim.pid())).unwrap();
    let core = limits.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    assert_eq!(
        core.split_whitespace().skip(4).take(2).collect::<Vec<_>>(),
        ["0", "0"],
        "{core}"
    );
    // And it serves.
    let mut client = shim.client().await;
    client.version(cri::VersionRequest::default()).await.expect("Version");
}
