//! Captures that cannot succeed, on each runtime: refused before anything
//! is paused where that can be known then (connected TCP sockets, without
//! podckpt.io/tcp-established; any TCP socket, where the node's CRIU cannot
//! save them on its kernel), and otherwise explained after CRIU has
//! failed: its own reason in the message, with the code of whose it is to
//! fix, and its whole log kept where an operator can read it, private to
//! root, while the caller's output directory is left empty.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tonic::Code;

use crate::preflight::{check, failed, request, verdict};
use crate::support::{self, COUNTER, Pod, Shim, Testbed};

on_each_runtime!(
    connected_tcp_sockets_are_refused_before_the_pod_is_paused,
    a_capture_criu_refuses_names_its_reason_and_keeps_its_log,
);

/// A server and a client in the container, connected on loopback.
/// Each end reads a pipe that stays open, not the container's empty stdin.
const CONNECTED: &str =
    "sleep 3600 | busybox nc -l -p 1234 > /dev/null & sleep 0.5; sleep 3600 | busybox nc 127.0.0.1 1234 > /dev/null & ";

async fn connected_tcp_sockets_are_refused_before_the_pod_is_paused(tb: Testbed) {
    let mut shim = Shim::start_with_metrics(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "tcp").await;
    let cid = pod
        .start_container(&mut client, &tb.image, "chatty", &format!("{CONNECTED}{COUNTER}"))
        .await;
    assert!(support::count_reaches(&client, &cid, 3, Duration::from_secs(10)).await);
    let (_keep, out) = support::empty_output("tcp");

    let answer = check(&shim, request(&pod.id, &out)).await.expect("CheckPod");
    // CRIU before 4.2 cannot save TCP sockets at all on a kernel from 6.16
    // (trixie's 4.1.1 on this test bed's 6.18): then that is the reason.
    let release = nix::sys::utsname::uname()
        .unwrap()
        .release()
        .to_string_lossy()
        .into_owned();
    let version = |text: &str| -> Vec<u32> {
        text.split(|c: char| !c.is_ascii_digit())
            .filter_map(|p| p.parse().ok())
            .take(2)
            .collect()
    };
    let saves_tcp = version(&release) < vec![6, 16] || version(&answer.engine_version) >= vec![4, 2];
    let (check_name, hint) = if saves_tcp {
        ("tcp-connections", "podckpt.io/tcp-established=true")
    } else {
        ("tcp-sockets", "install CRIU 4.2 or later")
    };
    assert_eq!(failed(&answer), [check_name], "{answer:#?}");
    let (_, why) = verdict(&answer, check_name, &cid);
    assert!(why.contains("127.0.0.1:1234") && why.contains(hint), "{why}");
    let refused = support::checkpoint_pod(&shim, &pod.id, &out, &[], &[])
        .await
        .expect_err("connected sockets without tcp-established");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains(hint), "{}", refused.message());
    let metrics = shim.metrics().await;
    assert_eq!(
        metrics.get("podckpt_checkpoint_freeze_duration_seconds_count"),
        0.0,
        "the pod was paused"
    );
    assert_eq!(support::dir_names(&out), Vec::<String>::new());

    // With the option, nothing else stops it before the pause.
    let mut asked = request(&pod.id, &out);
    asked.options.insert("podckpt.io/tcp-established".into(), "true".into());
    let answer = check(&shim, asked).await.expect("CheckPod");
    let expected: &[&str] = if saves_tcp { &[] } else { &["tcp-sockets"] };
    assert_eq!(failed(&answer), expected, "{answer:#?}");
    if saves_tcp {
        support::checkpoint_pod(&shim, &pod.id, &out, &[], &[("podckpt.io/tcp-established", "true")])
            .await
            .expect("CheckpointPod with tcp-established");
    }
    let _ = &mut shim;
}

/// A deleted file of 4 MiB held open: CRIU saves deleted files only up to
/// 1 MiB, and says so only once it dumps (the pod is frozen by then).
async fn a_capture_criu_refuses_names_its_reason_and_keeps_its_log(tb: Testbed) {
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "ghost").await;
    let script =
        format!("dd if=/dev/zero of=/tmp/big bs=1M count=4 2>/dev/null; exec 3</tmp/big; rm /tmp/big; {COUNTER}");
    let cid = pod.start_container(&mut client, &tb.image, "ghost", &script).await;
    assert!(support::count_reaches(&client, &cid, 3, Duration::from_secs(10)).await);
    let (_keep, out) = support::empty_output("ghost");

    let refused = support::checkpoint_pod(&shim, &pod.id, &out, &[], &[])
        .await
        .expect_err("a ghost file past CRIU's limit");
    let message = refused.message();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        message.contains("Can't dump ghost file") && message.contains("container ghost"),
        "{message}"
    );
    let kept = message
        .split("CRIU's whole log is kept at ")
        .nth(1)
        .unwrap_or_else(|| panic!("no kept log named: {message}"))
        .trim();
    let kept = Path::new(kept);
    assert!(kept.starts_with(shim.state_dir()), "{}", kept.display());
    let log = std::fs::read_to_string(kept).expect("the kept log");
    assert!(
        log.contains("Can't dump ghost file"),
        "the kept log is not CRIU's dump.log"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(kept), mode(kept.parent().unwrap())), (0o600, 0o700));
    // The contract: the caller's directory is left empty; and the pod runs on.
    assert_eq!(support::dir_names(&out), Vec::<String>::new());
    assert_eq!(support::runc_status(&cid), "running");
    let now = support::count(&mut client, &cid).await;
    assert!(support::count_reaches(&client, &cid, now + 1, Duration::from_secs(5)).await);
}
