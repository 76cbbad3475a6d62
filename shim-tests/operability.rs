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
        std::process::Command::new(env!("CARGO_BIN_EXE_podckptd"))
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

/// `GET /metrics` on the metrics socket: the status and the body.
async fn scrape(socket: &std::path::Path) -> (http::StatusCode, String) {
    use http_body_util::BodyExt;
    let stream = tokio::net::UnixStream::connect(socket)
        .await
        .expect("the metrics socket");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .expect("HTTP/1 handshake");
    tokio::spawn(connection);
    let request = http::Request::get("/metrics")
        .header(http::header::HOST, "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.expect("GET /metrics");
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn metrics_count_what_was_done(tb: Testbed) {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dir.path().join("metrics.sock");
    let shim = Shim::start_with(&tb, &format!("metrics_listen = \"unix://{}\"\n", metrics.display()), 5);
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

    let (status, text) = scrape(&metrics).await;
    assert_eq!(status, http::StatusCode::OK);
    for line in [
        r#"podckpt_passthrough_calls_total{method="/runtime.v1.RuntimeService/Version",code="OK"} 3"#,
        r#"podckpt_passthrough_calls_total{method="/runtime.v1.RuntimeService/ContainerStatus",code="NOT_FOUND"} 2"#,
        r#"podckpt_pod_calls_total{method="/runtime.v1.RuntimeService/CheckpointPod",code="INVALID_ARGUMENT"} 1"#,
        r#"podckpt_passthrough_call_duration_seconds_count{method="/runtime.v1.RuntimeService/Version"} 3"#,
        r#"podckpt_pod_call_duration_seconds_count{method="/runtime.v1.RuntimeService/CheckpointPod"} 1"#,
    ] {
        assert!(text.contains(line), "{line} is not in the metrics:\n{text}");
    }
    // Nothing else was called.
    assert_eq!(text.matches("_calls_total{").count(), 3, "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
}
