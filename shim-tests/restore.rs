//! RestorePod plus StartContainer through the shim, with real runc and CRIU
//! under the podckpt handler (podckpt-runc) of containerd and of CRI-O.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use podckpt::api::cri;
use serial_test::serial;
use tonic::Code;

use crate::support::{self, COUNTER, Pod, RestoreCall, Shim, checkpoint_pod, count, eventually, exec, testbed};

on_each_runtime!(
    a_restored_counter_goes_on_from_its_saved_value,
    one_checkpoint_restored_twice_gives_two_replicas,
    bad_checkpoints_and_configs_are_refused_and_create_nothing,
    a_two_container_pod_comes_back_whole,
    a_container_holding_256_mib_restores,
);

/// A counter pod counted up to at least `min`, checkpointed into a new
/// directory; returns (checkpoint dir holder, path, the count just before).
async fn checkpointed_counter(shim: &Shim, tb: &support::Testbed, min: u64) -> (tempfile::TempDir, PathBuf, u64) {
    let counter = support::container_config("counter", &tb.image, COUNTER);
    support::checkpointed(shim, "", counter, min).await
}

async fn a_restored_counter_goes_on_from_its_saved_value(tb: support::Testbed) {
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let (_keep, checkpoint, saved) = checkpointed_counter(&shim, &tb, 10).await;

    let (pod, restored) = Pod::restore(&shim, &checkpoint, &["counter"])
        .await
        .expect("RestorePod");
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0].name, "counter");
    let cid = restored[0].container_id.clone();
    let state = support::container_status(&mut client, &cid).await.state;
    assert_eq!(
        state,
        cri::ContainerState::ContainerCreated as i32,
        "RestorePod must return CREATED containers"
    );

    client
        .start_container(cri::StartContainerRequest {
            container_id: cid.clone(),
        })
        .await
        .expect("StartContainer");
    assert!(support::was_restored(&cid), "the container was started afresh");
    let first = count(&mut client, &cid).await;
    assert!(
        first >= saved,
        "the counter restarted: {first} after restore, {saved} before the checkpoint"
    );
    let advanced = support::count_reaches(&client, &cid, first + 1, Duration::from_secs(5)).await;
    assert!(advanced, "the restored counter does not count");
    // The writable layer came back too: the written file, and not the deleted one.
    assert_eq!(
        exec(&mut client, &cid, &["cat", "/tmp/written"]).await,
        (b"hi\n".to_vec(), 0)
    );
    assert_ne!(
        exec(&mut client, &cid, &["ls", "/bin/yes"]).await.1,
        0,
        "a deleted file is back"
    );
    drop(pod);
}

async fn one_checkpoint_restored_twice_gives_two_replicas(tb: support::Testbed) {
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let (_keep, checkpoint, saved) = checkpointed_counter(&shim, &tb, 5).await;
    let mut pods = Vec::new();
    for _ in 0..2 {
        let (pod, cid) = support::restore_and_start(&shim, &checkpoint, "counter").await;
        pods.push((pod, cid));
    }
    assert_ne!(pods[0].0.id, pods[1].0.id);
    for (_, cid) in &pods {
        assert!(count(&mut client, cid).await >= saved);
        assert_eq!(
            support::container_status(&mut client, cid).await.state,
            cri::ContainerState::ContainerRunning as i32
        );
    }
}

async fn bad_checkpoints_and_configs_are_refused_and_create_nothing(tb: support::Testbed) {
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let (_keep, checkpoint, _) = checkpointed_counter(&shim, &tb, 1).await;
    let before = support::sandboxes(&mut client).await.len();

    // The wrong container set.
    let other = support::container_config("other", &tb.image, "exit 1");
    let err = RestoreCall::new(&checkpoint, &[other], "podckpt")
        .send(&shim, Some(Duration::from_secs(60)))
        .await
        .err()
        .expect("wrong names");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let err = Pod::restore(&shim, &checkpoint, &[]).await.err().expect("no configs");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A symlink that escapes the checkpoint.
    let escaped = support::copy_dir(&checkpoint, "escaped");
    std::os::unix::fs::symlink("/etc/shadow", escaped.1.join("pod.dump.link")).unwrap();
    let err = Pod::restore(&shim, &escaped.1, &["counter"])
        .await
        .err()
        .expect("symlink");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A corrupted CRIU image.
    let corrupted = support::copy_dir(&checkpoint, "corrupted");
    let folder = std::fs::read_dir(&corrupted.1)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let image = folder.join("checkpoint/inventory.img");
    let mut bytes = std::fs::read(&image).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&image, bytes).unwrap();
    let err = Pod::restore(&shim, &corrupted.1, &["counter"])
        .await
        .err()
        .expect("corrupted");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("SHA-256"), "{err:?}");

    // A page image cut short, as a power cut before its data reached the
    // disk would leave it: the whole checkpoint is refused.
    let truncated = support::copy_dir(&checkpoint, "truncated");
    let pages = support::pages_image(&truncated.1);
    let length = std::fs::metadata(&pages).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&pages)
        .unwrap()
        .set_len(length / 2)
        .unwrap();
    let err = Pod::restore(&shim, &truncated.1, &["counter"])
        .await
        .err()
        .expect("truncated");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("does not match"), "{err:?}");

    // The original, sealed by the checkpoint that wrote it, changed in place
    // with its size and mtime kept: the seal no longer holds, and the full
    // verification finds the change.
    let pages = support::pages_image(&checkpoint);
    let mtime = std::fs::metadata(&pages).unwrap().modified().unwrap();
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::File::options().read(true).write(true).open(&pages).unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, 100).unwrap();
        file.write_all_at(&[byte[0] ^ 0xff], 100).unwrap();
        file.set_modified(mtime).unwrap();
    }
    let err = Pod::restore(&shim, &checkpoint, &["counter"])
        .await
        .err()
        .expect("changed in place");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("SHA-256"), "{err:?}");

    // A relative path.
    let configs = support::checkpointed_configs(&checkpoint, &["counter"]);
    let err = RestoreCall::new(Path::new("relative/ckpt"), &configs, "podckpt")
        .send(&shim, Some(Duration::from_secs(60)))
        .await
        .err()
        .expect("relative");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    assert_eq!(
        support::sandboxes(&mut client).await.len(),
        before,
        "a refused restore left a sandbox"
    );
    let tokens = std::fs::read_dir(shim.state_dir().join("restores"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(tokens, 0, "a refused restore left a token");
}

async fn a_two_container_pod_comes_back_whole(tb: support::Testbed) {
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "pair").await;
    let (counter, writer) = pod.start_counter_and_writer(&mut client, &tb.image).await;
    assert!(support::count_reaches(&client, &counter, 5, Duration::from_secs(10)).await);
    let (written, _) = exec(&mut client, &writer, &["cat", "/data.txt"]).await;
    assert!(written.starts_with(b"payload-"));

    let (_keep, out) = support::empty_output("pair");
    // Read before the checkpoint: the pod runs on after it.
    let before = count(&mut client, &counter).await;
    checkpoint_pod(&shim, &pod.id, &out, &[], &[])
        .await
        .expect("CheckpointPod");
    drop(pod);

    let (restored_pod, restored) = Pod::restore(&shim, &out, &["counter", "writer"])
        .await
        .expect("RestorePod");
    assert_eq!(restored.len(), 2);
    for c in &restored {
        support::start_restored(&shim, &c.container_id).await;
    }
    let id_of = |name: &str| restored.iter().find(|c| c.name == name).unwrap().container_id.clone();
    assert!(
        count(&mut client, &id_of("counter")).await >= before,
        "the counter restarted"
    );
    assert_eq!(
        exec(&mut client, &id_of("writer"), &["cat", "/data.txt"]).await,
        (written, 0),
        "the written file is gone"
    );
    for c in &restored {
        let state = support::container_status(&mut client, &c.container_id).await.state;
        assert_eq!(
            state,
            cri::ContainerState::ContainerRunning as i32,
            "{} is not running",
            c.name
        );
    }
    drop(restored_pod);
}

/// 256 MiB held in a shell variable: it is process memory, so it must
/// travel in the CRIU images and be there after restore.
async fn a_container_holding_256_mib_restores(tb: support::Testbed) {
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "big").await;
    const SIZE: u64 = 256 << 20;
    // Progress without sleeping children: once here, a `sleep 0.2` child
    // restored mid-sleep after a long dump had not woken 10 s later (CRIU
    // 4.1); that would hide what this test is about.
    let script = format!(
        "x=$(head -c {SIZE} /dev/zero | tr '\\0' m); i=0; while :; do i=$((i+1)); \\
         if [ $((i % 20000)) -eq 0 ]; then echo ${{#x}} > /tmp/len; echo $i > /tmp/count; fi; done"
    );
    let cid = pod.start_container(&mut client, &tb.image, "big", &script).await;
    let ready = support::count_reaches(&client, &cid, 2, Duration::from_secs(60)).await;
    assert!(ready, "the 256 MiB container did not get going");

    let (_keep, out) = support::empty_output("big");
    checkpoint_pod(&shim, &pod.id, &out, &[], &[])
        .await
        .expect("CheckpointPod");
    let images: u64 = walkdir::WalkDir::new(&out)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    assert!(
        images >= SIZE,
        "the checkpoint holds {images} bytes, less than the memory"
    );
    drop(pod);

    let (restored_pod, new) = support::restore_and_start(&shim, &out, "big").await;
    // /tmp/len also came back with the rootfs diff; remove it, so that only
    // the restored process, from the variable in its memory, can write it.
    assert_eq!(exec(&mut client, &new, &["rm", "/tmp/len"]).await.1, 0);
    let rewritten = eventually(Duration::from_secs(60), || {
        let mut c = client.clone();
        let id = new.clone();
        async move { exec(&mut c, &id, &["cat", "/tmp/len"]).await.1 == 0 }
    })
    .await;
    if !rewritten {
        let status = support::container_status(&mut client, &new).await;
        let probe = exec(&mut client, &new, &["sh", "-c", "cat /tmp/count; ps"]).await;
        panic!(
            "the restored process did not go on: state {} exit {} reason {:?}; probe {:?}",
            status.state,
            status.exit_code,
            status.reason,
            String::from_utf8_lossy(&probe.0)
        );
    }
    let (len, _) = exec(&mut client, &new, &["cat", "/tmp/len"]).await;
    assert_eq!(
        String::from_utf8_lossy(&len).trim(),
        SIZE.to_string(),
        "the restored memory is not whole"
    );
    drop(restored_pod);
}

/// crun as the backend: a pod run by crun is captured with `crun
/// checkpoint`, and restored through podckpt-runc in front of crun (`crun
/// restore`); its counter goes on from the saved value.
#[tokio::test]
#[serial]
async fn crun_checkpoints_and_restores_a_counter() {
    let Some(tb) = testbed() else { return };
    let shim = Shim::start_with(&tb, support::CRUN_HANDLERS, 5);
    let mut client = shim.client().await;
    let counter = support::container_config("counter", &tb.image, COUNTER);
    let (_keep, out, before) = support::checkpointed(&shim, "crun", counter, 5).await;
    assert_eq!(support::read_manifest(&out).backend, "criu-crun");

    let (pod, cid) = support::restore_and_start_on(&shim, &out, "counter", "podckpt-crun").await;
    assert!(count(&mut client, &cid).await >= before);
    assert!(support::count_reaches(&client, &cid, before + 3, Duration::from_secs(10)).await);
    let state = Command::new("crun")
        .args(["--root", support::RUNC_ROOT, "state", &cid])
        .output()
        .unwrap();
    let state: serde_json::Value = serde_json::from_slice(&state.stdout).expect("crun knows the container");
    assert_eq!(state["status"], "running");
    drop(pod);
}

/// What podckptd keeps beside a checkpoint goes when its use has: a pod
/// restored but never started, then removed, leaves no restore token, and
/// a deleted checkpoint leaves no seal, both on the next pod call and when
/// the daemon starts.
#[tokio::test]
#[serial]
async fn seals_and_tokens_that_outlived_their_use_are_removed() {
    let Some(tb) = testbed() else { return };
    let mut shim = Shim::start(&tb);
    let state = shim.state_dir();
    let entries = |dir: &str| std::fs::read_dir(state.join(dir)).map(|d| d.count()).unwrap_or(0);
    for restart in [false, true] {
        let (_keep, checkpoint, _) = checkpointed_counter(&shim, &tb, 1).await;
        let (pod, _) = Pod::restore(&shim, &checkpoint, &["counter"])
            .await
            .expect("RestorePod");
        assert_eq!(entries("restores"), 1, "a token for the container not yet started");
        assert!(entries("seals") >= 1, "the checkpoint was sealed when written");
        drop(pod);
        std::fs::remove_dir_all(&checkpoint).unwrap();
        if restart {
            shim.restart(&tb);
        } else {
            // Any pod call tidies up, even one that is refused.
            let err = support::checkpoint_pod_exactly(&shim, "no-such-pod", &checkpoint, vec![], &[])
                .await
                .expect_err("a refused call");
            assert_eq!(err.code(), Code::InvalidArgument);
        }
        let tidied = support::eventually(Duration::from_secs(10), || {
            let left = (entries("restores"), entries("seals"));
            async move { left == (0, 0) }
        })
        .await;
        assert!(
            tidied,
            "after {}: {} tokens and {} seals left",
            if restart { "a restart" } else { "a pod call" },
            entries("restores"),
            entries("seals")
        );
    }
}

/// The pod-wide PID namespace (shareProcessNamespace, and the CRI's
/// default): every container's processes get their PIDs back in the new
/// pod's one namespace, so a PID that another process of the new pod takes
/// first would stop the restore. Here the first container forks all the
/// time and keeps its children alive, as a worker pool does, while the
/// second waits to be started: its saved PIDs are low, where the first
/// one's new children land. (containerd only: CRI-O gives a pod-wide PID
/// namespace's infra container an oom_score_adj this machine cannot set.)
#[tokio::test]
#[serial]
async fn containers_sharing_the_pods_pid_namespace_come_back_while_others_fork() {
    let Some(tb) = testbed() else { return };
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run_edited(&mut client, &shim.socket, "shared-pid", "", |config| {
        support::share_pod_pids(support::pod_namespaces(config))
    })
    .await;
    let in_pod_namespace = |mut config: cri::ContainerConfig| {
        support::share_pod_pids(support::container_namespaces(&mut config));
        config
    };
    // Each round leaves a child alive for 30 s and waits without forking
    // (`read -t` on a FIFO nobody writes): every PID it takes stays taken.
    const FORKER: &str = "busybox mkfifo /tmp/tick; exec 3<>/tmp/tick; i=0; \
        while :; do i=$((i+1)); echo $i > /tmp/count; sleep 30 & read -t 0.2 x <&3; done";
    let started = |name: &str, script: &str| in_pod_namespace(support::container_config(name, &tb.image, script));
    let forker = pod.start_configured(&mut client, started("forker", FORKER)).await;
    // The counter's saved PIDs lie among the first the forker's children
    // take in the new pod, unless those are kept above the checkpoint's.
    assert!(support::count_reaches(&client, &forker, 3, Duration::from_secs(20)).await);
    let counter = pod.start_configured(&mut client, started("counter", COUNTER)).await;
    assert!(support::count_reaches(&client, &counter, 5, Duration::from_secs(10)).await);
    let (_keep, out) = support::empty_output("shared-pid");
    let before = count(&mut client, &counter).await;
    checkpoint_pod(&shim, &pod.id, &out, &[], &[])
        .await
        .expect("CheckpointPod");
    drop(pod);

    let configs: Vec<_> = support::checkpointed_configs(&out, &["forker", "counter"])
        .into_iter()
        .map(in_pod_namespace)
        .collect();
    let call = RestoreCall::new(&out, &configs, "podckpt")
        .with_sandbox(|config| support::share_pod_pids(support::pod_namespaces(config)));
    let (restored_pod, restored) = call
        .send(&shim, Some(Duration::from_secs(60)))
        .await
        .expect("RestorePod");
    let id_of = |name: &str| restored.iter().find(|c| c.name == name).unwrap().container_id.clone();
    support::start_restored(&shim, &id_of("forker")).await;
    // The forker fills the new namespace with some 40 children before the
    // counter comes back.
    let resumed = count(&mut client, &id_of("forker")).await;
    assert!(support::count_reaches(&client, &id_of("forker"), resumed + 40, Duration::from_secs(30)).await);
    support::start_restored(&shim, &id_of("counter")).await;
    // Every process the new pod made (but its first, the pause) has a PID
    // above every saved one: the forker's new children too.
    let saved: Vec<u32> = ["forker", "counter"]
        .iter()
        .flat_map(|name| saved_pids(&out, name))
        .collect();
    let highest = *saved.iter().max().unwrap();
    let (listing, _) = exec(&mut client, &id_of("counter"), &["ls", "/proc"]).await;
    let made: Vec<u32> = String::from_utf8_lossy(&listing)
        .split_whitespace()
        .filter_map(|entry| entry.parse().ok())
        .filter(|pid| *pid != 1 && !saved.contains(pid))
        .collect();
    assert!(made.len() > 40, "the forker's new children are not there: {made:?}");
    let below: Vec<&u32> = made.iter().filter(|pid| **pid <= highest).collect();
    assert!(
        below.is_empty(),
        "new processes took PIDs {below:?}, at or below the checkpoint's highest, {highest}"
    );
    let now = count(&mut client, &id_of("counter")).await;
    assert!(
        now >= before,
        "the counter restarted: {now} after restore, {before} before"
    );
    assert!(support::count_reaches(&client, &id_of("counter"), now + 1, Duration::from_secs(5)).await);
    drop(restored_pod);
}

/// The PIDs of a checkpointed container's processes, as CRIU's own `crit`
/// lists them from its images.
fn saved_pids(checkpoint: &Path, name: &str) -> Vec<u32> {
    let options: podckpt::archive::PodOptions =
        serde_json::from_slice(&std::fs::read(checkpoint.join(podckpt::archive::POD_OPTIONS)).unwrap()).unwrap();
    let images = checkpoint
        .join(&options.containers[name])
        .join(podckpt::archive::CHECKPOINT_DIR);
    let out = support::crit(&["x".as_ref(), images.as_os_str(), "ps".as_ref()]);
    String::from_utf8_lossy(&out)
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().next()?.parse().ok())
        .collect()
}
