//! The shim and the runtime below going away and coming back.

use std::time::Duration;

use podckpt::api::cri;
use serial_test::serial;
use tonic::Code;

use crate::support::{Pod, Shim, container_status, eventually, exec, testbed};

#[tokio::test]
#[serial]
async fn containerd_restart_under_a_running_shim() {
    let Some(tb) = testbed() else { return };
    let shim = Shim::start_with_metrics(&tb);
    let mut client = shim.client().await;
    client
        .version(cri::VersionRequest::default())
        .await
        .expect("Version before the restart");
    assert_eq!(shim.metrics().await.get("podckpt_runtime_reconnects_total"), 0.0);

    tb.script("stop-daemon");
    let restarted = scopeguard(|| tb.script("start"));
    for _ in 0..3 {
        let err = client
            .version(cri::VersionRequest::default())
            .await
            .expect_err("containerd is down");
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(
            err.message().contains(&tb.endpoint()),
            "the message should name the endpoint: {err:?}"
        );
    }
    drop(restarted);

    // The same shim process, the same client connection: calls succeed again.
    let pid = shim.pid();
    let back = eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        async move { client.version(cri::VersionRequest::default()).await.is_ok() }
    })
    .await;
    assert!(back, "calls did not recover after containerd came back");
    assert_eq!(shim.pid(), pid);
    // Dialed again once, however many calls failed meanwhile.
    assert_eq!(shim.metrics().await.get("podckpt_runtime_reconnects_total"), 1.0);
    let pod = Pod::run(&mut client, &shim.socket, "after-restart").await;
    let cid = pod.start_sleeper(&mut client, &tb.image, "c").await;
    assert_eq!(exec(&mut client, &cid, &["echo", "ok"]).await, (b"ok\n".to_vec(), 0));
}

#[tokio::test]
#[serial]
async fn restarting_the_shim_leaves_pods_untouched() {
    let Some(tb) = testbed() else { return };
    let mut shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "survivor").await;
    let cid = pod
        .start_container(
            &mut client,
            &tb.image,
            "counter",
            "i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done",
        )
        .await;
    let before = container_status(&mut client, &cid).await;

    shim.restart(&tb);
    let mut client = shim.client().await;

    let after = container_status(&mut client, &cid).await;
    assert_eq!(after.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(after.started_at, before.started_at, "the container was restarted");
    let read = |client: &mut crate::support::Runtime| {
        let mut client = client.clone();
        let cid = cid.clone();
        async move { exec(&mut client, &cid, &["cat", "/tmp/count"]).await }
    };
    let (first, _) = read(&mut client).await;
    let advanced = eventually(Duration::from_secs(5), || {
        let read = read(&mut client);
        let first = first.clone();
        async move { read.await.0 != first }
    })
    .await;
    assert!(advanced, "the counter stopped while the shim restarted");
}

#[tokio::test]
#[serial]
async fn sigterm_lets_in_flight_calls_finish_and_removes_the_socket() {
    let Some(tb) = testbed() else { return };
    let mut shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "graceful").await;
    let cid = pod.start_sleeper(&mut client, &tb.image, "c").await;

    let mut slow = client.clone();
    let call = tokio::spawn({
        let cid = cid.clone();
        async move { exec(&mut slow, &cid, &["sh", "-c", "sleep 2; echo finished"]).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let exit = tokio::task::spawn_blocking(move || {
        let status = shim.stop();
        (status, shim.socket.exists())
    })
    .await
    .unwrap();
    assert!(exit.0.success(), "podckptd exited with {:?}", exit.0);
    assert!(!exit.1, "the socket file was left behind");
    assert_eq!(
        call.await.unwrap(),
        (b"finished\n".to_vec(), 0),
        "the in-flight call was cut"
    );
}

#[tokio::test]
#[serial]
async fn a_live_socket_is_refused_and_a_stale_one_replaced() {
    let Some(tb) = testbed() else { return };
    let shim = Shim::start(&tb);
    let second = crate::support::unit::podckptd()
        .args(["--config", "/dev/null", "--listen"])
        .arg(&shim.socket)
        .args(["--runtime-endpoint", &tb.endpoint()])
        .output()
        .expect("second podckptd");
    assert!(!second.status.success(), "a second daemon took a live socket");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(stderr.contains("held by a running daemon"), "unclear error: {stderr}");

    // A daemon killed outright leaves its socket file; the next one takes over.
    let mut shim = shim;
    shim.kill();
    assert!(shim.socket.exists(), "a killed daemon leaves its socket file");
    shim.respawn(&tb);
    let mut client = shim.client().await;
    client
        .version(cri::VersionRequest::default())
        .await
        .expect("Version on the new daemon");
}

/// Runs `f` when dropped, so a failed assertion still restarts containerd.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
