//! CRI-O below the shim: the test bed's CRI-O (built from upstream, in
//! ../shared/bin) with runc. The first of the suites that run against CRI-O
//! as they do against containerd: a pod's whole life through podckptd, each
//! answer compared with CRI-O's own, and CheckpointPod of a running pod.

use std::time::Duration;

use prost::Message;
use serial_test::serial;

use podckpt::api::cri;

use tonic::Code;

use crate::contract;
use crate::support::{self, COUNTER, Pod, RestoreCall, Shim, crio_testbed, eventually};

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
    let created = pod.start_container(&mut client, &tb.image, "counter", COUNTER).await;
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
    assert_eq!(
        ours.status.as_ref().map(|s| s.state),
        theirs.status.as_ref().map(|s| s.state)
    );
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
    assert!(
        manifest.files.keys().any(|f| f.ends_with("/checkpoint/pages-1.img")),
        "no page image"
    );
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
        support::sandboxes(&mut shim.client().await)
            .await
            .iter()
            .all(|p| p.id != pod_id)
    })
    .await;
    assert!(gone, "the pod outlived its removal");
}

/// The contract on CRI-O, which reports no container config, only the
/// spec: a config is compared with the process the spec resolved, and each
/// difference is refused with nothing left behind.
#[tokio::test]
#[serial]
async fn configs_that_describe_another_process_are_refused_on_crio() {
    use crate::contract::{
        Change, DEADLINE, add_a_variable, assert_refusal, described_counter, pause_image, refused, run_as_nobody,
        security,
    };
    let Some(tb) = crio_testbed() else { return };
    let shim = Shim::start(&tb);
    let (_keep, checkpoint, _) = support::checkpointed(&shim, "", described_counter(&tb.image), 2).await;
    let record = support::read_process_record(&checkpoint, "counter");
    assert!(record.process.is_none(), "CRI-O reports no config");
    let spec = record.spec_process.expect("the spec's process is recorded");
    assert_eq!(spec.argv.last().map(String::as_str), Some("counter-arg0"));
    assert_eq!((spec.cwd.as_str(), spec.env_value("GREETING")), ("/tmp", Some("hello")));
    let absent = format!("podckpt.local/{}:none", support::unique("absent"));

    let cases: Vec<(&str, Change, Code, Vec<String>)> = vec![
        (
            "command",
            Box::new(|c| c.command[2] = "exit 1".into()),
            Code::InvalidArgument,
            vec!["command and args differ".into()],
        ),
        (
            "args",
            Box::new(|c| {
                c.command.pop();
                c.args = vec!["another-arg0".into()];
            }),
            Code::InvalidArgument,
            vec!["command and args differ".into(), "another-arg0".into()],
        ),
        (
            "working directory",
            Box::new(|c| c.working_dir = "/".into()),
            Code::InvalidArgument,
            vec![r#"working_dir differs: checkpoint has "/tmp", config has "/""#.into()],
        ),
        (
            "a changed variable",
            Box::new(|c| {
                c.envs
                    .iter_mut()
                    .filter(|kv| kv.key == "GREETING")
                    .for_each(|kv| kv.value = "bye".into())
            }),
            Code::InvalidArgument,
            vec![r#"envs differ (values not shown): not as in the checkpoint {"GREETING"}"#.into()],
        ),
        (
            "a removed variable",
            Box::new(|c| c.envs.retain(|kv| kv.key != "MODE")),
            Code::InvalidArgument,
            vec![r#"only in the checkpoint {"MODE"}"#.into()],
        ),
        (
            "args that only end the same way",
            Box::new(|c| {
                c.args = c.command.split_off(1);
                c.command.clear();
            }),
            Code::InvalidArgument,
            vec!["command and args differ".into()],
        ),
        (
            "an added variable",
            Box::new(add_a_variable),
            Code::InvalidArgument,
            vec![r#"not as in the checkpoint {"EXTRA"}"#.into()],
        ),
        (
            "run_as_user",
            Box::new(run_as_nobody),
            Code::InvalidArgument,
            vec!["run_as_user differs: checkpoint has 0, config has 65534".into()],
        ),
        (
            "supplemental_groups",
            Box::new(|c| security(c).supplemental_groups.push(5678)),
            Code::InvalidArgument,
            vec!["supplemental_groups differ".into(), "adds [5678]".into()],
        ),
        (
            "another image",
            Box::new(|c| c.image.as_mut().unwrap().image = pause_image()),
            Code::InvalidArgument,
            vec!["image differs".into()],
        ),
        (
            "an image absent from the node",
            Box::new(|c| c.image.as_mut().unwrap().image = absent.clone()),
            Code::FailedPrecondition,
            vec![absent.clone(), "not present on the node".into()],
        ),
    ];
    for (case, change, code, words) in &cases {
        let mut configs = support::checkpointed_configs(&checkpoint, &["counter"]);
        change(&mut configs[0]);
        let status = refused(&tb, &shim, RestoreCall::new(&checkpoint, &configs, "podckpt"), DEADLINE).await;
        let mut words: Vec<&str> = words.iter().map(String::as_str).collect();
        words.push(r#"container "counter""#);
        assert_refusal(case, &status, *code, &words);
    }
    let configs = support::checkpointed_configs(&checkpoint, &["counter"]);
    for (case, handler, code, words) in [
        (
            "an unknown handler",
            "no-such-handler",
            Code::InvalidArgument,
            [r#""no-such-handler""#, r#""podckpt""#],
        ),
        (
            "the default handler",
            "",
            Code::FailedPrecondition,
            ["does not run podckpt-runc", r#""podckpt""#],
        ),
    ] {
        let status = refused(&tb, &shim, RestoreCall::new(&checkpoint, &configs, handler), DEADLINE).await;
        assert_refusal(case, &status, code, &words);
    }
}

/// A checkpoint taken on containerd, restored on CRI-O (the same image in
/// both stores). containerd gives every container an /etc/hosts mount and
/// CRI-O does not; CRIU needs a mount in the new container for each bind
/// mount of the old. Without one, RestorePod is refused, saying which, and
/// leaves nothing; with one (the kubelet adds /etc/hosts to every config it
/// restores with), the counter goes on in a CRI-O pod.
#[tokio::test]
#[serial]
async fn a_containerd_checkpoint_restores_on_crio() {
    let (Some(containerd), Some(crio)) = (support::testbed(), crio_testbed()) else {
        return;
    };
    let source = Shim::start(&containerd);
    let counter = support::container_config("counter", &containerd.image, COUNTER);
    let (_keep, checkpoint, saved) = support::checkpointed(&source, "", counter, 5).await;
    drop(source);

    let target = Shim::start(&crio);
    let mut configs = support::checkpointed_configs(&checkpoint, &["counter"]);
    let status = contract::refused(
        &crio,
        &target,
        RestoreCall::new(&checkpoint, &configs, "podckpt"),
        contract::DEADLINE,
    )
    .await;
    contract::assert_refusal(
        "no /etc/hosts",
        &status,
        Code::FailedPrecondition,
        &[r#"container "counter""#, r#"["/etc/hosts"]"#, "add a mount"],
    );

    let hosts = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(hosts.path(), "127.0.0.1 localhost\n").unwrap();
    configs[0].mounts.push(cri::Mount {
        container_path: "/etc/hosts".into(),
        host_path: hosts.path().display().to_string(),
        ..Default::default()
    });
    let (pod, restored) = RestoreCall::new(&checkpoint, &configs, "podckpt")
        .send(&target, contract::DEADLINE)
        .await
        .expect("RestorePod on CRI-O of a containerd checkpoint");
    let cid = restored[0].container_id.clone();
    support::start_restored(&target, &cid).await;
    let mut client = target.client().await;
    assert!(
        support::count(&mut client, &cid).await >= saved,
        "the counter started over"
    );
    assert!(support::count_reaches(&client, &cid, saved + 3, Duration::from_secs(10)).await);
    drop(pod);
}
