//! What the pass-through must carry unchanged: status codes and messages,
//! deadlines, metadata, large messages, many calls at once, and paths our
//! schema has never heard of; on containerd and on CRI-O.

use std::time::{Duration, Instant};

use bytes::Bytes;
use podckpt::api::cri;
use serial_test::serial;
use tonic::Code;

use crate::support::{self, Pod, Shim, Testbed, exec, raw, testbed};

on_each_runtime!(
    errors_match_the_runtime_called_directly,
    callers_deadline_ends_a_slow_call,
    large_exec_output_arrives_whole,
    messages_of_64_mib_cross_both_ways,
    many_concurrent_calls_are_all_answered,
    unknown_paths_are_forwarded,
    pod_checkpoint_paths_are_answered_by_podckpt,
);

async fn errors_match_the_runtime_called_directly(tb: Testbed) {
    let shim = Shim::start(&tb);
    let mut via_shim = shim.client().await;
    let mut direct = tb.direct().await;

    let missing = cri::ContainerStatusRequest {
        container_id: "no-such-container".into(),
        verbose: false,
    };
    let a = via_shim
        .container_status(missing.clone())
        .await
        .expect_err("unknown container");
    let b = direct.container_status(missing).await.expect_err("unknown container");
    assert_eq!(a.code(), Code::NotFound);
    assert_eq!((a.code(), a.message()), (b.code(), b.message()));

    let bad_start = cri::StartContainerRequest {
        container_id: "no-such-container".into(),
    };
    let a = via_shim
        .start_container(bad_start.clone())
        .await
        .expect_err("unknown container");
    let b = direct.start_container(bad_start).await.expect_err("unknown container");
    assert_eq!((a.code(), a.message()), (b.code(), b.message()));

    // A request the runtime itself rejects as invalid.
    let no_config = cri::RunPodSandboxRequest {
        config: None,
        runtime_handler: String::new(),
    };
    let a = via_shim
        .run_pod_sandbox(no_config.clone())
        .await
        .expect_err("no config");
    let b = direct.run_pod_sandbox(no_config).await.expect_err("no config");
    assert_eq!((a.code(), a.message()), (b.code(), b.message()));
}

async fn callers_deadline_ends_a_slow_call(tb: Testbed) {
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "deadline").await;
    let cid = pod.start_sleeper(&mut client, &tb.image, "sleeper").await;

    let request = cri::ExecSyncRequest {
        container_id: cid.clone(),
        cmd: vec!["sleep".into(), "8".into()],
        timeout: 0,
    };
    let started = Instant::now();
    let reply = raw::h2_unary(
        &shim.socket,
        "/runtime.v1.RuntimeService/ExecSync",
        &prost::Message::encode_to_vec(&request),
        &[("grpc-timeout", "1S")],
    )
    .await;
    let took = started.elapsed();
    // containerd answers DEADLINE_EXCEEDED. CRI-O's grpc-go also resets the
    // stream with CANCEL when the deadline passes, racing its own answer;
    // the shim relays whichever comes.
    assert!(
        reply.grpc_status.as_deref() == Some("4") || reply.reset == Some(h2::Reason::CANCEL),
        "expected DEADLINE_EXCEEDED or a CANCEL reset, got status {:?} ({:?}), reset {:?}",
        reply.grpc_status,
        reply.grpc_message,
        reply.reset
    );
    assert!(
        took < Duration::from_millis(2500),
        "the deadline took {took:?} to apply"
    );

    // The shim is still healthy afterwards.
    let (out, code) = exec(&mut client, &cid, &["echo", "after"]).await;
    assert_eq!((out.as_slice(), code), (&b"after\n"[..], 0));
}

async fn large_exec_output_arrives_whole(tb: Testbed) {
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "bigexec").await;
    let cid = pod.start_sleeper(&mut client, &tb.image, "big").await;

    const SIZE: usize = 6 << 20;
    let script = format!("head -c {SIZE} /dev/zero | tr '\\0' 'x'; echo -n END");
    let (out, code) = exec(&mut client, &cid, &["sh", "-c", &script]).await;
    assert_eq!(code, 0);
    assert_eq!(out.len(), SIZE + 3);
    assert!(out[..SIZE].iter().all(|&b| b == b'x'));
    assert_eq!(&out[SIZE..], b"END");
}

/// 64 MiB each way: up in a container annotation, back in ContainerStatus.
async fn messages_of_64_mib_cross_both_ways(tb: Testbed) {
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "bigmsg").await;

    const SIZE: usize = 64 << 20;
    // Not a repeated byte: a shifted or truncated copy would not compare equal.
    let value: String = (0..SIZE).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    let mut config = support::container_config("big", &tb.image, "exec sleep 3600");
    config.annotations.insert("test.podckpt/large".into(), value.clone());
    let cid = pod.create_container(&mut client, config).await;

    let status = client
        .container_status(cri::ContainerStatusRequest {
            container_id: cid,
            verbose: false,
        })
        .await
        .expect("ContainerStatus")
        .into_inner()
        .status
        .expect("status");
    let back = status
        .annotations
        .get("test.podckpt/large")
        .expect("annotation came back");
    assert_eq!(back.len(), SIZE);
    assert!(back == &value, "the 64 MiB annotation changed on the way");
}

async fn many_concurrent_calls_are_all_answered(tb: Testbed) {
    let shim = Shim::start(&tb);
    let client = shim.client().await;
    let runtime_name = tb.runtime_name().await;
    let calls = (0..256).map(|i| {
        let mut client = client.clone();
        tokio::spawn(async move {
            if i % 2 == 0 {
                client
                    .version(cri::VersionRequest { version: "v1".into() })
                    .await
                    .map(|r| r.into_inner().runtime_name)
            } else {
                client
                    .list_pod_sandbox(cri::ListPodSandboxRequest { filter: None })
                    .await
                    .map(|_| "listed".to_string())
            }
        })
    });
    // Spawn all before awaiting any, so they are truly in flight together.
    let handles: Vec<_> = calls.collect();
    let mut answers = Vec::new();
    for handle in handles {
        match handle.await.expect("task") {
            Ok(answer) => answers.push(answer),
            Err(status) => panic!("a concurrent call failed: {status:?}"),
        }
    }
    assert_eq!(answers.len(), 256);
    assert_eq!(answers.iter().filter(|a| **a == runtime_name).count(), 128);
}

/// Paths unknown to us go to the runtime, so the caller gets its answer.
async fn unknown_paths_are_forwarded(tb: Testbed) {
    let shim = Shim::start(&tb);
    let via_shim = support::channel(&shim.socket);
    let direct = support::channel(&tb.socket);

    for path in [
        "/runtime.v1.RuntimeService/NoSuchMethodYet",
        "/runtime.v1.RuntimeService/CheckpointContainer",
        "/no.such.Service/Call",
    ] {
        let a = raw::unary(via_shim.clone(), path, Bytes::new(), &[])
            .await
            .expect_err(path);
        let b = raw::unary(direct.clone(), path, Bytes::new(), &[])
            .await
            .expect_err(path);
        assert_eq!((a.code(), a.message()), (b.code(), b.message()), "{path}");
        assert!(
            !a.message().contains("podckpt"),
            "{path} was answered by the shim: {a:?}"
        );
    }
}

/// The pod checkpoint paths are ours; the runtime would not know them.
async fn pod_checkpoint_paths_are_answered_by_podckpt(tb: Testbed) {
    let shim = Shim::start(&tb);
    let via_shim = support::channel(&shim.socket);
    let direct = support::channel(&tb.socket);
    let path = podckpt::api::CHECKPOINT_POD_PATH;
    let ours = raw::unary(via_shim, path, Bytes::new(), &[])
        .await
        .expect_err("CheckpointPod");
    let theirs = raw::unary(direct, path, Bytes::new(), &[])
        .await
        .expect_err("CheckpointPod");
    assert_ne!(ours.message(), theirs.message(), "CheckpointPod reached the runtime");
    assert!(ours.message().contains("CheckpointPod"), "{ours:?}");
}

/// containerd's own API needs the `containerd-namespace` metadata: it only
/// works through the shim if request metadata arrives intact, on a service
/// path outside the CRI.
#[tokio::test]
#[serial]
async fn request_metadata_reaches_the_runtime() {
    let Some(tb) = testbed() else { return };
    let shim = Shim::start(&tb);
    let via_shim = support::channel(&shim.socket);
    let direct = support::channel(&tb.socket);
    const LIST: &str = "/containerd.services.images.v1.Images/List";

    let without = raw::unary(via_shim.clone(), LIST, Bytes::new(), &[])
        .await
        .expect_err("no namespace");
    assert_eq!(without.code(), Code::FailedPrecondition, "{without:?}");

    let meta = [("containerd-namespace", "k8s.io")];
    let with = raw::unary(via_shim, LIST, Bytes::new(), &meta)
        .await
        .expect("namespace given");
    let expected = raw::unary(direct, LIST, Bytes::new(), &meta)
        .await
        .expect("namespace given");
    // containerd encodes Go maps in random order, so two answers to the same
    // call match in size and content but not byte for byte.
    assert_eq!(
        with.get_ref().len(),
        expected.get_ref().len(),
        "the image list differs through the shim"
    );
    let image = tb.image.as_bytes();
    assert!(
        with.get_ref().windows(image.len()).any(|w| w == image),
        "test image not listed"
    );
    // Response metadata comes back too.
    assert_eq!(
        with.metadata().get("content-type").map(|v| v.to_str().unwrap()),
        Some("application/grpc")
    );
}
