//! CRI-O below the shim: the test bed's CRI-O (built from upstream, in
//! ../shared/bin) with runc. The first of the suites that run against CRI-O
//! as they do against containerd: a pod's whole life through podckptd, each
//! answer compared with CRI-O's own, and CheckpointPod of a running pod.

use std::time::Duration;

use prost::Message;
use serial_test::serial;

use podckpt::api::cri;

use crate::support::{self, COUNTER, Pod, Shim, crio_testbed, eventually};


#[tokio::test]
#[serial]
async fn a_crio_pod_lives_through_the_shim_as_it_does_directly() {
    let Some(tb) = crio_testbed() else { return };
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let mut direct = tb.direct().await;

    // The same answer, byte for byte, through podckptd and from CRI-O.
    let version = cri::VersionRequest { version: "v1".into() };
    let ours = client.version(version.clone()).await.expect("Version").into_inner();
    let theirs = direct.version(version).await.expect("Version").into_inner();
    assert_eq!(ours.runtime_name, "cri-o");
    assert_eq!(ours.encode_to_vec(), theirs.encode_to_vec());

    // Removed at the end by the test itself, and by its Drop however the
    // test ends.
    let pod = Pod::run(&mut client, &shim.socket, "crio").await;
    let pod_id = pod.id.clone();
    let created = pod
        .create_container(&mut client, support::container_config("counter", &tb.image, COUNTER))
        .await;
    client
        .start_container(cri::StartContainerRequest {
            container_id: created.clone(),
        })
        .await
        .expect("StartContainer");
    assert!(
        support::count_reaches(&client, &created, 3, Duration::from_secs(20)).await,
        "the counter does not count on CRI-O"
    );
    let (out, code) = support::exec(&mut client, &created, &["sh", "-c", "echo out; exit 3"]).await;
    assert_eq!((out.as_slice(), code), (b"out\n".as_slice(), 3));

    // Status through the shim is CRI-O's.
    let request = cri::ContainerStatusRequest {
        container_id: created.clone(),
        verbose: false,
    };
    let ours = client.container_status(request.clone()).await.unwrap().into_inner();
    let theirs = direct.container_status(request).await.unwrap().into_inner();
    assert_eq!(ours.status.as_ref().map(|s| s.state), theirs.status.as_ref().map(|s| s.state));
    assert_eq!(ours.status.map(|s| s.id), Some(created.clone()));

    // A missing container: CRI-O's own status code and message.
    let missing = cri::ContainerStatusRequest {
        container_id: "no-such-container".into(),
        verbose: false,
    };
    let ours = client.container_status(missing.clone()).await.unwrap_err();
    let theirs = direct.container_status(missing).await.unwrap_err();
    assert_eq!((ours.code(), ours.message()), (theirs.code(), theirs.message()));

    // CheckpointPod on CRI-O: the pod keeps running.
    let before = support::count(&mut client, &created).await;
    let (_keep, out) = support::empty_output("ckpt");
    support::checkpoint_pod_exactly(&shim, &pod_id, &out, vec![created.clone()], &[])
        .await
        .expect("CheckpointPod on CRI-O");
    let manifest = support::read_manifest(&out);
    assert_eq!(manifest.backend, "criu-runc");
    assert!(manifest.files.keys().any(|f| f.ends_with("/checkpoint/pages-1.img")), "no page image");
    assert!(
        support::count_reaches(&client, &created, before + 3, Duration::from_secs(20)).await,
        "the pod did not go on after CheckpointPod"
    );

    client
        .stop_container(cri::StopContainerRequest {
            container_id: created.clone(),
            timeout: 10,
        })
        .await
        .expect("StopContainer");
    client
        .remove_container(cri::RemoveContainerRequest {
            container_id: created.clone(),
        })
        .await
        .expect("RemoveContainer");
    client
        .stop_pod_sandbox(cri::StopPodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("StopPodSandbox");
    client
        .remove_pod_sandbox(cri::RemovePodSandboxRequest {
            pod_sandbox_id: pod_id.clone(),
        })
        .await
        .expect("RemovePodSandbox");
    let gone = eventually(Duration::from_secs(10), || async {
        support::sandboxes(&mut shim.client().await).await.iter().all(|p| p.id != pod_id)
    })
    .await;
    assert!(gone, "the pod outlived its removal");
}



// The restore cases of `restore.rs`, on CRI-O: the container comes back
// CREATED, and StartContainer restores it (see `interposer::deferred`).

#[tokio::test]
#[serial]
async fn a_restored_counter_goes_on_from_its_saved_value_on_crio() {
    if let Some(tb) = crio_testbed() {
        crate::restore::restored_counter_goes_on(tb).await;
    }
}

#[tokio::test]
#[serial]
async fn one_checkpoint_restored_twice_gives_two_replicas_on_crio() {
    if let Some(tb) = crio_testbed() {
        crate::restore::two_replicas_from_one_checkpoint(tb).await;
    }
}

#[tokio::test]
#[serial]
async fn a_two_container_pod_comes_back_whole_on_crio() {
    if let Some(tb) = crio_testbed() {
        crate::restore::two_containers_come_back_whole(tb).await;
    }
}

#[tokio::test]
#[serial]
async fn a_container_holding_256_mib_restores_on_crio() {
    if let Some(tb) = crio_testbed() {
        crate::restore::memory_of_256_mib_restores(tb).await;
    }
}

#[tokio::test]
#[serial]
async fn bad_checkpoints_and_configs_are_refused_and_create_nothing_on_crio() {
    if let Some(tb) = crio_testbed() {
        crate::restore::bad_restores_are_refused(tb).await;
    }
}

