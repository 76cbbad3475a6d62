//! A whole pod lifecycle through the shim, checked against containerd's own
//! view and the node's state.

use std::path::Path;
use std::time::Duration;

use podckpt::api::cri;
use serial_test::serial;

use crate::support::{Pod, Shim, container_status, exec, testbed};

const RUNC_ROOT: &str = "/run/containerd/runc/k8s.io";

#[tokio::test]
#[serial]
async fn pod_lifecycle_through_the_shim() {
    let Some(tb) = testbed() else { return };
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;

    let pod = Pod::run(&mut client, &shim.socket, "lifecycle").await;
    let status = client
        .pod_sandbox_status(cri::PodSandboxStatusRequest {
            pod_sandbox_id: pod.id.clone(),
            verbose: true,
        })
        .await
        .expect("PodSandboxStatus")
        .into_inner();
    let sandbox = status.status.expect("sandbox status");
    assert_eq!(sandbox.state, cri::PodSandboxState::SandboxReady as i32);
    let ip = sandbox.network.expect("network status").ip;
    assert!(
        ip.starts_with("10.244.77."),
        "pod IP {ip:?} is not from the test bed's CNI range"
    );
    let netns = sandbox_netns(&status.info);

    let cid = pod
        .start_container(&mut client, &tb.image, "worker", "echo started; exec sleep 3600")
        .await;

    let (out, code) = exec(&mut client, &cid, &["echo", "hello from the pod"]).await;
    assert_eq!((out.as_slice(), code), (&b"hello from the pod\n"[..], 0));
    let (_, code) = exec(&mut client, &cid, &["sh", "-c", "exit 3"]).await;
    assert_eq!(code, 3, "a non-zero exit code must come back unchanged");

    let cstatus = container_status(&mut client, &cid).await;
    assert_eq!(cstatus.state, cri::ContainerState::ContainerRunning as i32);
    assert_eq!(cstatus.metadata.expect("metadata").name, "worker");
    assert_eq!(cstatus.image.expect("image").image, tb.image);

    let listed = client
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod.id.clone(),
                label_selector: [("podckpt-test-container".to_string(), "worker".to_string())].into(),
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert_eq!(
        listed.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(),
        vec![cid.as_str()]
    );

    let stats = client
        .container_stats(cri::ContainerStatsRequest {
            container_id: cid.clone(),
        })
        .await
        .expect("ContainerStats")
        .into_inner()
        .stats
        .expect("stats");
    assert_eq!(stats.attributes.expect("attributes").id, cid);
    let memory = stats
        .memory
        .expect("memory stats")
        .working_set_bytes
        .expect("working set")
        .value;
    assert!(memory > 0, "a running container uses some memory");

    // The container's output went to the CRI log file the pod asked for.
    let log = std::fs::read_to_string(pod.log_dir().join("worker.log")).expect("container log");
    assert!(log.contains("started"), "log was {log:?}");

    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .expect("StopPodSandbox");
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod.id.clone(),
        })
        .await
        .expect("RemovePodSandbox");

    let sandboxes = client
        .list_pod_sandbox(cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                id: pod.id.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("ListPodSandbox")
        .into_inner()
        .items;
    assert!(sandboxes.is_empty(), "sandbox still listed: {sandboxes:?}");
    let containers = client
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod.id.clone(),
                ..Default::default()
            }),
        })
        .await
        .expect("ListContainers")
        .into_inner()
        .containers;
    assert!(containers.is_empty(), "containers still listed: {containers:?}");
    for id in [&pod.id, &cid] {
        let state = Path::new(RUNC_ROOT).join(id);
        assert!(!state.exists(), "runc state {} left behind", state.display());
    }
    if let Some(netns) = netns {
        assert!(!Path::new(&netns).exists(), "network namespace {netns} left behind");
    }
}

/// The network namespace path from containerd's verbose sandbox info.
fn sandbox_netns(info: &std::collections::HashMap<String, String>) -> Option<String> {
    let raw = info.get("info")?;
    let key = "\"netNamespacePath\":\"";
    let start = raw.find(key)? + key.len();
    let end = raw[start..].find('"')? + start;
    Some(raw[start..end].to_owned()).filter(|p| !p.is_empty())
}

#[tokio::test]
#[serial]
async fn container_events_stream_through_the_shim() {
    let Some(tb) = testbed() else { return };
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    // containerd sends a stream's headers with its first event, so the
    // subscription must wait in a task while the pod is being created.
    let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let mut subscriber = client.clone();
    let subscription = tokio::spawn(async move {
        let mut stream = subscriber
            .get_container_events(cri::GetEventsRequest {})
            .await?
            .into_inner();
        while let Some(event) = stream.message().await? {
            if tx.send(event).is_err() {
                break;
            }
        }
        Ok::<_, tonic::Status>(())
    });
    // Give the subscription time to reach containerd before anything happens.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pod = Pod::run(&mut client, &shim.socket, "events").await;
    let cid = pod.start_sleeper(&mut client, &tb.image, "evented").await;

    let mut seen = Vec::new();
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(event) = events.recv().await {
            seen.push((event.container_id.clone(), event.container_event_type));
            if event.container_id == cid
                && event.container_event_type == cri::ContainerEventType::ContainerStartedEvent as i32
            {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or(false);
    assert!(
        found,
        "no STARTED event for {cid}; saw {seen:?}; stream: {:?}",
        subscription.is_finished()
    );
    subscription.abort();
    assert!(
        seen.iter()
            .any(|(id, kind)| id == &cid && *kind == cri::ContainerEventType::ContainerCreatedEvent as i32),
        "no CREATED event for {cid} before STARTED; saw {seen:?}"
    );
}
