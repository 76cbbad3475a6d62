//! CheckpointPod through the shim, with real runc and CRIU.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use podckpt::archive::{self, PodOptions};
use serial_test::serial;
use tonic::Code;

use crate::support::{
    self, COUNTER, Pod, Shim, checkpoint_pod, checkpoint_pod_exactly, count, eventually, raw, runc_status, testbed,
};

on_each_runtime!(
    a_counter_pod_is_checkpointed_and_keeps_running,
    bad_requests_get_their_status_and_change_nothing,
);

/// Nothing but `keep` in `parent`: nothing written beside the checkpoint.
fn only_entry(parent: &Path, keep: &str) {
    assert_eq!(support::dir_names(parent), [keep], "leftovers beside the checkpoint");
}

/// The identity of the caller's directory, which the call must keep.
fn inode_and_mode(dir: &Path) -> (u64, u32) {
    let meta = std::fs::symlink_metadata(dir).unwrap();
    (meta.ino(), meta.permissions().mode() & 0o7777)
}

async fn a_counter_pod_is_checkpointed_and_keeps_running(tb: support::Testbed) {
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "ckpt").await;
    let cid = pod.start_container(&mut client, &tb.image, "counter", COUNTER).await;
    assert!(support::count_reaches(&client, &cid, 2, Duration::from_secs(5)).await);

    let (parent, out) = support::empty_output("ckpt");
    let callers = inode_and_mode(&out);
    checkpoint_pod(&shim, &pod.id, &out, &[&cid], &[])
        .await
        .expect("CheckpointPod");
    assert_eq!(
        inode_and_mode(&out),
        callers,
        "the caller's directory was replaced or changed"
    );

    // The pod goes on: running, not paused, and counting.
    assert_eq!(runc_status(&cid), "running");
    let after = count(&mut client, &cid).await;
    assert!(support::count_reaches(&client, &cid, after + 1, Duration::from_secs(5)).await);

    // The layout.
    let options: PodOptions = serde_json::from_slice(&std::fs::read(out.join(archive::POD_OPTIONS)).unwrap()).unwrap();
    let folder_name = format!("{cid}-counter");
    assert_eq!(options.version, 1);
    assert_eq!(options.containers.get("counter"), Some(&folder_name));
    let pod_dump: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join(archive::POD_DUMP)).unwrap()).unwrap();
    assert_eq!(
        pod_dump["metadata"]["name"],
        pod.config.metadata.as_ref().unwrap().name.as_str()
    );
    let folder = out.join(&folder_name);
    for name in [
        archive::CONFIG_DUMP,
        archive::SPEC_DUMP,
        archive::STATUS_DUMP,
        archive::STATS_DUMP,
        archive::DUMP_LOG,
        archive::ROOTFS_DIFF,
        archive::DELETED_FILES,
    ] {
        assert!(folder.join(name).is_file(), "{name} missing");
    }
    assert!(folder.join("checkpoint/inventory.img").is_file(), "no CRIU images");
    let log = std::fs::read_to_string(folder.join(archive::DUMP_LOG)).unwrap();
    assert!(log.contains("Dumping finished successfully"), "dump.log: {log}");
    // A counter holds no TCP socket: CRIU dumped it without locking the
    // pod's network, and recorded so for the restore (CRIU's own numbering:
    // 0 iptables, 1 nftables, 2 skip).
    let inventory = support::crit_decode(&folder.join("checkpoint/inventory.img"));
    assert_eq!(inventory["entries"][0]["network_lock_method"], 2, "{inventory}");

    // The writable layer: the written file is in the diff, the removed one listed.
    let deleted: Vec<String> =
        serde_json::from_slice(&std::fs::read(folder.join(archive::DELETED_FILES)).unwrap()).unwrap();
    assert_eq!(deleted, vec!["bin/yes".to_string()]);
    let mut diff = tar::Archive::new(std::fs::File::open(folder.join(archive::ROOTFS_DIFF)).unwrap());
    let mut written = None;
    for entry in diff.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap() == Path::new("tmp/written") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut entry, &mut s).unwrap();
            written = Some(s);
        }
    }
    assert_eq!(written.as_deref(), Some("hi\n"));

    // Private to root, and every checksum holds.
    for entry in walkdir::WalkDir::new(&out).min_depth(1) {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        let want = if entry.file_type().is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} has mode {mode:o}", entry.path().display());
    }
    let manifest = support::read_manifest(&out);
    assert_eq!(manifest.engine_version, "4.1.1");
    let freeze_ms = manifest.freeze_ms.expect("the freeze window is recorded");
    assert!(freeze_ms > 0 && freeze_ms < 60_000, "freeze window {freeze_ms} ms");
    assert_eq!(manifest.pod_sandbox_id, pod.id);
    assert!(
        manifest
            .files
            .contains_key(&format!("{folder_name}/checkpoint/inventory.img"))
    );
    manifest.verify(&out).expect("checksums");
    only_entry(parent.path(), "ckpt");

    // checkpointctl accepts the container folder.
    let tar_path = parent.path().join("counter.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&tar_path).unwrap());
    builder.append_dir_all(".", &folder).unwrap();
    builder.into_inner().unwrap();
    for verb in ["show", "inspect"] {
        let shown = Command::new("checkpointctl")
            .arg(verb)
            .arg(&tar_path)
            .output()
            .expect("checkpointctl");
        let text = String::from_utf8_lossy(&shown.stdout);
        assert!(
            shown.status.success(),
            "checkpointctl {verb}: {}",
            String::from_utf8_lossy(&shown.stderr)
        );
        assert!(
            text.contains("counter") && text.contains(&cid[..12]),
            "checkpointctl {verb} output: {text}"
        );
    }
}

async fn bad_requests_get_their_status_and_change_nothing(tb: support::Testbed) {
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "bad").await;
    let cid = pod.start_sleeper(&mut client, &tb.image, "sleeper").await;
    let exited = pod.start_container(&mut client, &tb.image, "done", "exit 0").await;
    assert!(
        eventually(Duration::from_secs(10), || {
            let mut c = client.clone();
            let id = exited.clone();
            async move {
                support::container_status(&mut c, &id).await.state
                    == podckpt::api::cri::ContainerState::ContainerExited as i32
            }
        })
        .await
    );
    let other = Pod::run(&mut client, &shim.socket, "other").await;
    let foreign = other.start_sleeper(&mut client, &tb.image, "foreign").await;

    let (parent, empty) = support::empty_output("empty");
    let full = parent.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("keep"), b"precious").unwrap();

    let cases: Vec<(&str, Result<(), tonic::Status>, Code)> = vec![
        (
            "unknown pod",
            checkpoint_pod(&shim, "no-such-pod", &empty, &[&cid], &[]).await,
            Code::NotFound,
        ),
        (
            "empty container list",
            checkpoint_pod_exactly(&shim, &pod.id, &empty, vec![], &[]).await,
            Code::InvalidArgument,
        ),
        (
            "a container named twice",
            checkpoint_pod_exactly(&shim, &pod.id, &empty, vec![cid.clone(), cid.clone()], &[]).await,
            Code::InvalidArgument,
        ),
        (
            "relative path",
            checkpoint_pod(&shim, &pod.id, Path::new("relative/dir"), &[], &[]).await,
            Code::InvalidArgument,
        ),
        (
            "missing path",
            checkpoint_pod(&shim, &pod.id, &parent.path().join("absent"), &[], &[]).await,
            Code::InvalidArgument,
        ),
        (
            "non-empty dir",
            checkpoint_pod(&shim, &pod.id, &full, &[], &[]).await,
            Code::FailedPrecondition,
        ),
        (
            "foreign container",
            checkpoint_pod(&shim, &pod.id, &empty, &[&foreign], &[]).await,
            Code::InvalidArgument,
        ),
        (
            "exited container",
            checkpoint_pod(&shim, &pod.id, &empty, &[&exited], &[]).await,
            Code::FailedPrecondition,
        ),
        (
            "unknown option",
            checkpoint_pod(&shim, &pod.id, &empty, &[], &[("leave-running", "true")]).await,
            Code::InvalidArgument,
        ),
    ];
    for (what, result, code) in cases {
        let err = result.expect_err(what);
        assert_eq!(err.code(), code, "{what}: {err:?}");
        assert!(!err.message().is_empty(), "{what}: no message");
    }

    // No deadline: a bare HTTP/2 call without grpc-timeout.
    let request = checkpoint_request(&pod.id, &empty, &cid);
    let reply = raw::h2_unary(
        &shim.socket,
        podckpt::api::CHECKPOINT_POD_PATH,
        &prost::Message::encode_to_vec(&request),
        &[],
    )
    .await;
    assert_eq!(
        reply.grpc_status.as_deref(),
        Some("3"),
        "no deadline: {:?}",
        reply.grpc_message
    );

    // Nothing changed: the pod runs unpaused, the directories are as they were.
    assert_eq!(runc_status(&cid), "running");
    assert_eq!(runc_status(&foreign), "running");
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    assert_eq!(std::fs::read(full.join("keep")).unwrap(), b"precious");
    assert_eq!(support::dir_names(parent.path()), ["empty", "full"]);
}

#[tokio::test]
#[serial]
async fn concurrent_checkpoints_of_one_pod_do_not_corrupt_each_other() {
    let Some(tb) = testbed() else { return };
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "twice").await;
    let cid = pod.start_container(&mut client, &tb.image, "counter", COUNTER).await;

    let parent = tempfile::tempdir().unwrap();
    let dirs = [parent.path().join("a"), parent.path().join("b")];
    for d in &dirs {
        std::fs::create_dir(d).unwrap();
    }
    let ids = [cid.as_str()];
    let (a, b) = tokio::join!(
        checkpoint_pod(&shim, &pod.id, &dirs[0], &ids, &[]),
        checkpoint_pod(&shim, &pod.id, &dirs[1], &ids, &[])
    );
    let mut succeeded = 0;
    for (dir, result) in dirs.iter().zip([a, b]) {
        match result {
            Ok(()) => {
                succeeded += 1;
                support::read_manifest(dir)
                    .verify(dir)
                    .expect("a complete, intact checkpoint");
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Aborted, "{status:?}");
                assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0, "a refused call left output");
            }
        }
    }
    assert!(succeeded >= 1, "neither checkpoint succeeded");
    assert_eq!(runc_status(&cid), "running");
    assert_eq!(support::dir_names(parent.path()), ["a", "b"]);
}

/// A daemon killed between pause and resume leaves a journal; the next one
/// resumes what it lists, and removes the half-written output it names.
#[tokio::test]
#[serial]
async fn a_restarted_daemon_resumes_what_a_killed_one_paused() {
    let Some(tb) = testbed() else { return };
    let mut shim = Shim::start_with_metrics(&tb);
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "journal").await;
    let cid = pod.start_sleeper(&mut client, &tb.image, "frozen").await;

    shim.kill();
    let status = Command::new("runc")
        .args(["--root", support::RUNC_ROOT, "pause", &cid])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(runc_status(&cid), "paused");
    // And a half-written checkpoint in the caller's directory, with a file
    // that must not be touched next to it.
    let parent = tempfile::tempdir().unwrap();
    let out = parent.path().join("ckpt");
    std::fs::create_dir_all(out.join("ID-NAME/checkpoint")).unwrap();
    std::fs::write(out.join("ID-NAME/checkpoint/pages-1.img"), b"memory").unwrap();
    let callers = inode_and_mode(&out);
    std::fs::write(parent.path().join("keep"), b"").unwrap();
    let journal = podckpt::pod::journal::Journal::open(&shim.state_dir()).unwrap();
    journal
        .record(podckpt::pod::journal::PausedSet {
            backend: "criu".into(),
            runtime: "runc".into(),
            root: support::RUNC_ROOT.into(),
            containers: vec![podckpt::backend::ContainerRef::id(cid.clone())],
            output: Some(out.clone()),
        })
        .unwrap();

    shim.respawn(&tb);
    // Recovery starts right after the socket is bound, beside serving.
    let resumed = eventually(Duration::from_secs(10), || {
        let cid = cid.clone();
        async move { runc_status(&cid) == "running" }
    })
    .await;
    assert!(resumed, "the new daemon did not resume the paused container");
    assert!(
        !shim.state_dir().join("paused.json").exists(),
        "the journal was not cleared"
    );
    assert_eq!(
        support::dir_names(&out),
        Vec::<String>::new(),
        "the half-written checkpoint was left"
    );
    assert_eq!(inode_and_mode(&out), callers, "the caller's directory itself stays");
    assert_eq!(support::dir_names(parent.path()), ["ckpt", "keep"]);
    // Counted once the recovery has ended, just after the journal goes.
    let counted = eventually(Duration::from_secs(5), || async {
        shim.metrics().await.value("podckpt_journal_recovered_entries_total") == Some(1.0)
    })
    .await;
    assert!(counted, "{}", shim.metrics().await.0);
}

/// A pod whose one container holds 256 MiB, so that CRIU takes a while.
async fn pod_holding_256_mib(shim: &Shim, tb: &support::Testbed, name: &str) -> (Pod, String) {
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, name).await;
    let cid = pod
        .start_container(&mut client, &tb.image, "mem", &support::memory_counter(256))
        .await;
    assert!(
        support::count_reaches(&client, &cid, 2, Duration::from_secs(120)).await,
        "the 256 MiB container did not get going"
    );
    (pod, cid)
}

/// The pod is running, counting, and nothing of the checkpoint is left.
fn left_running_and_clean(shim: &Shim, cid: &str, parent: &Path) -> Result<(), String> {
    let state = runc_status(cid);
    if state != "running" {
        return Err(format!("container is {state}"));
    }
    if support::criu_running() {
        return Err("a CRIU process is still running".into());
    }
    if shim.state_dir().join("paused.json").exists() {
        return Err("the paused-container journal is not empty".into());
    }
    let names = support::dir_names(parent);
    if names != ["ckpt"] || std::fs::read_dir(parent.join("ckpt")).unwrap().count() != 0 {
        return Err(format!("output left behind: {names:?}"));
    }
    Ok(())
}

/// CheckpointPod of one container in a task of its own, with a 60 s deadline.
fn checkpoint_in_background(
    shim: &Shim,
    pod: &str,
    out: &Path,
    container: &str,
) -> tokio::task::JoinHandle<Result<tonic::Response<podckpt::api::pod::CheckpointPodResponse>, tonic::Status>> {
    let mut pods = shim.pods();
    let mut request = tonic::Request::new(checkpoint_request(pod, out, container));
    request.set_timeout(Duration::from_secs(60));
    tokio::spawn(async move { pods.checkpoint_pod(request).await })
}

fn checkpoint_request(pod: &str, out: &Path, container: &str) -> podckpt::api::pod::CheckpointPodRequest {
    podckpt::api::pod::CheckpointPodRequest {
        pod_sandbox_id: pod.into(),
        output_path: out.display().to_string(),
        container_ids: vec![container.into()],
        ..Default::default()
    }
}

/// The contract: "The runtime must not remove the directory ... must not
/// write outside this directory". Watched all through a checkpoint long
/// enough to see: the caller's directory keeps its inode and its (unusual)
/// mode, and nothing ever appears beside it.
#[tokio::test]
#[serial]
async fn the_callers_directory_is_kept_and_nothing_is_written_beside_it() {
    let Some(tb) = testbed() else { return };
    let shim = Shim::start(&tb);
    let (pod, cid) = pod_holding_256_mib(&shim, &tb, "indir").await;
    let (parent, out) = support::empty_output("ckpt");
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o711)).unwrap();
    let callers = inode_and_mode(&out);

    let call = checkpoint_in_background(&shim, &pod.id, &out, &cid);
    let mut looks = 0;
    let mut saw_files_inside = false;
    while !call.is_finished() {
        assert_eq!(
            support::dir_names(parent.path()),
            ["ckpt"],
            "written beside the checkpoint"
        );
        assert_eq!(
            inode_and_mode(&out),
            callers,
            "the caller's directory was replaced or changed"
        );
        saw_files_inside |= !support::dir_names(&out).is_empty();
        looks += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    call.await.unwrap().expect("CheckpointPod");
    assert!(
        saw_files_inside && looks > 10,
        "the checkpoint was too quick to watch ({looks} looks)"
    );
    assert_eq!(inode_and_mode(&out), callers);
    only_entry(parent.path(), "ckpt");
    support::read_manifest(&out).verify(&out).expect("a whole checkpoint");
}

/// The deadline runs out while CRIU dumps 256 MiB. The dump under way is
/// let finish (CRIU cannot be cut off safely), then everything is undone:
/// when the DEADLINE_EXCEEDED answer arrives the pod already runs again,
/// unharmed, and nothing was written.
#[tokio::test]
#[serial]
async fn a_deadline_that_runs_out_mid_capture_resumes_the_pod_and_writes_nothing() {
    let Some(tb) = testbed() else { return };
    let shim = Shim::start(&tb);
    let (pod, cid) = pod_holding_256_mib(&shim, &tb, "deadline").await;
    let (parent, out) = support::empty_output("ckpt");

    // A raw client, which waits for the server's own answer rather than
    // giving up at the deadline itself.
    let reply = raw::h2_unary(
        &shim.socket,
        podckpt::api::CHECKPOINT_POD_PATH,
        &prost::Message::encode_to_vec(&checkpoint_request(&pod.id, &out, &cid)),
        &[("grpc-timeout", "150m")],
    )
    .await;
    assert_eq!(
        reply.grpc_status.as_deref(),
        Some("4"),
        "expected DEADLINE_EXCEEDED: {:?}",
        reply.grpc_message
    );
    let message = reply.grpc_message.unwrap_or_default();
    assert!(message.contains("resumed"), "{message}");
    // At once, not eventually.
    if let Err(why) = left_running_and_clean(&shim, &cid, parent.path()) {
        panic!("after DEADLINE_EXCEEDED: {why}");
    }
    let mut client = shim.client().await;
    let now = count(&mut client, &cid).await;
    assert!(support::count_reaches(&client, &cid, now + 2, Duration::from_secs(10)).await);
}

/// podckptd told to stop mid-checkpoint, with no grace period for its
/// calls, still ends what it started before it exits: the pod runs, and the
/// output is whole or absent, never partial.
#[tokio::test]
#[serial]
async fn a_daemon_stopped_mid_checkpoint_resumes_the_pod_before_it_exits() {
    let Some(tb) = testbed() else { return };
    let mut shim = Shim::start_with(&tb, "", 0);
    let (pod, cid) = pod_holding_256_mib(&shim, &tb, "sigterm").await;
    let (parent, out) = support::empty_output("ckpt");

    let call = checkpoint_in_background(&shim, &pod.id, &out, &cid);
    // The journal names the containers from just before the first pause to
    // just after the last resume. That window is a few hundred ms at 256 MiB,
    // too short for a poll that spawns `runc state`, so a cheap look at the
    // file, often, finds it.
    let journal = shim.state_dir().join("paused.json");
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !journal.exists() && !call.is_finished() && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if !journal.exists() {
        let answer = call.await;
        panic!("no pause of the pod was seen; the checkpoint answered {answer:?}");
    }
    let status = shim.stop();
    assert!(status.success(), "podckptd exited with {status}");

    // Already true when the daemon has exited.
    assert_eq!(runc_status(&cid), "running");
    assert!(!support::criu_running(), "a CRIU process is still running");
    assert!(!shim.state_dir().join("paused.json").exists());
    only_entry(parent.path(), "ckpt");
    if std::fs::read_dir(&out).unwrap().count() > 0 {
        support::read_manifest(&out)
            .verify(&out)
            .expect("a checkpoint finished at shutdown is whole");
    }
    // The caller lost its connection; what it heard does not matter here.
    let _ = call.await;
    shim.respawn(&tb);
}

/// podckptd killed outright while CRIU dumps: the next daemon resumes the
/// pod from its journal and removes the half-written checkpoint, and the
/// pod keeps running once the orphaned dump has ended.
#[tokio::test]
#[serial]
async fn a_daemon_killed_mid_dump_is_undone_by_the_next_one() {
    let Some(tb) = testbed() else { return };
    let mut shim = Shim::start(&tb);
    let (pod, cid) = pod_holding_256_mib(&shim, &tb, "killed").await;
    let (parent, out) = support::empty_output("ckpt");

    let call = checkpoint_in_background(&shim, &pod.id, &out, &cid);
    // CRIU writes its dump.log into the capture's work directory as it starts.
    let log = out.join(format!(".work-{cid}")).join("dump.log");
    let dumping = eventually(Duration::from_secs(10), || {
        let started = log.exists();
        async move { started }
    })
    .await;
    assert!(dumping, "the checkpoint never reached CRIU");
    shim.kill();
    assert!(call.await.unwrap().is_err(), "a killed daemon answered");
    shim.respawn(&tb);

    // The orphaned runc and CRIU finish on their own; after that nothing may
    // freeze the pod again.
    let until = std::time::Instant::now() + Duration::from_secs(60);
    while let Err(why) = left_running_and_clean(&shim, &cid, parent.path()) {
        assert!(std::time::Instant::now() < until, "60 s after the kill: {why}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(runc_status(&cid), "running", "re-frozen after recovery");
    let mut client = shim.client().await;
    let now = count(&mut client, &cid).await;
    assert!(support::count_reaches(&client, &cid, now + 2, Duration::from_secs(10)).await);
}

/// "Durable means on disk": when CheckpointPod answers OK, the 256 MiB it
/// wrote are on stable storage, not in the page cache waiting for
/// writeback. `podckpt.io/durable=false` skips that, and is still whole.
#[tokio::test]
#[serial]
async fn an_ok_checkpoint_is_on_stable_storage() {
    let Some(tb) = testbed() else { return };
    let shim = Shim::start(&tb);
    let (pod, cid) = pod_holding_256_mib(&shim, &tb, "durable").await;
    let (parent, out) = support::empty_output("ckpt");

    let dirty_before = support::dirty_kib();
    checkpoint_pod(&shim, &pod.id, &out, &[&cid], &[])
        .await
        .expect("CheckpointPod");
    let grown_mib = support::dirty_kib().saturating_sub(dirty_before) / 1024;
    let written_mib = support::read_manifest(&out).files.values().map(|f| f.size).sum::<u64>() >> 20;
    assert!(written_mib >= 256, "only {written_mib} MiB written");
    // A few MiB of the machine's other writes may come and go meanwhile.
    assert!(
        grown_mib <= 16,
        "{grown_mib} MiB of {written_mib} MiB written were still dirty"
    );
    support::read_manifest(&out).verify(&out).expect("a whole checkpoint");

    let fast = parent.path().join("fast");
    std::fs::create_dir(&fast).unwrap();
    checkpoint_pod(&shim, &pod.id, &fast, &[&cid], &[("podckpt.io/durable", "false")])
        .await
        .expect("a non-durable CheckpointPod");
    support::read_manifest(&fast)
        .verify(&fast)
        .expect("whole, if not durable");
    let err = checkpoint_pod(
        &shim,
        &pod.id,
        &parent.path().join("ckpt"),
        &[&cid],
        &[("podckpt.io/durable", "no")],
    )
    .await
    .expect_err("a value that is not true or false");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}
