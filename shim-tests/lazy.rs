//! Lazy restore (`podckpt.io/lazy-pages`): the restored process runs while
//! podckpt's page daemon serves its memory, and the daemon's life is tied
//! to the container's. The workload holds 256 MiB of random bytes and checks
//! their digest on demand, so a page served wrong, or zero-filled, shows.
//! The digest is taken by a forked shell, so the pages a child of the
//! restored process needs are served too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serial_test::serial;

use podckpt::api::cri;
use podckpt::pod::options::LAZY_PAGES;

use crate::support::{self, Pod, RestoreCall, Shim, eventually, exec, testbed};

const MIB: u64 = 256;

/// Holds `MIB` MiB of random bytes; writes their digest at the start, and
/// again each time /tmp/verify appears; counts meanwhile.
fn digest_workload() -> String {
    format!(
        "x=$(head -c {} /dev/urandom); echo \"$x\" | sha256sum > /tmp/digest.before; i=0; \
         while :; do i=$((i+1)); echo $i > /tmp/count; \
         if [ -e /tmp/verify ]; then rm /tmp/verify; echo \"$x\" | sha256sum > /tmp/digest.new; mv /tmp/digest.new /tmp/digest.after; fi; \
         sleep 0.05; done",
        MIB << 20
    )
}

struct Checkpointed {
    _parent: tempfile::TempDir,
    dir: PathBuf,
    digest: Vec<u8>,
}

async fn checkpointed_digest(shim: &Shim, tb: &support::Testbed) -> Checkpointed {
    let mut client = shim.client().await;
    let pod = Pod::run(&mut client, &shim.socket, "lazy-source").await;
    let cid = pod
        .start_container(&mut client, &tb.image, "holder", &digest_workload())
        .await;
    assert!(
        support::count_reaches(&client, &cid, 2, Duration::from_secs(60)).await,
        "the workload did not fill its memory"
    );
    let (digest, _) = exec(&mut client, &cid, &["cat", "/tmp/digest.before"]).await;
    assert_eq!(
        digest.len(),
        64 + 4,
        "a sha256sum line: {}",
        String::from_utf8_lossy(&digest)
    );
    let (parent, dir) = support::empty_output("ckpt");
    support::checkpoint_pod(shim, &pod.id, &dir, &[], &[])
        .await
        .expect("CheckpointPod");
    Checkpointed {
        _parent: parent,
        dir,
        digest,
    }
}

async fn restore_lazily(shim: &Shim, checkpoint: &Path, lazy: &str) -> (Pod, String) {
    let mut call = RestoreCall::new(
        checkpoint,
        &support::checkpointed_configs(checkpoint, &["holder"]),
        "podckpt",
    );
    call.request.options.insert(LAZY_PAGES.into(), lazy.into());
    let (pod, restored) = call
        .send(shim, Some(Duration::from_secs(60)))
        .await
        .expect("RestorePod");
    (pod, restored[0].container_id.clone())
}

async fn none_left(checkpoint: &Path) -> bool {
    eventually(Duration::from_secs(30), || async {
        support::lazy_processes(checkpoint).is_empty()
    })
    .await
}

fn restore_record(cid: &str) -> serde_json::Value {
    let path = Path::new(support::RUNC_ROOT)
        .join(cid)
        .join(podckpt::interposer::RESTORE_RECORD);
    serde_json::from_slice(&std::fs::read(&path).expect("the restore record")).unwrap()
}

/// What the page daemon of container `cid` says it served, once done: MiB
/// on faults, MiB pushed in the background.
fn served(tb: &support::Testbed, cid: &str) -> (f64, f64) {
    let log = support::page_daemon_log(tb, cid);
    let figure = |after: &str, unit: &str| -> Option<f64> {
        let rest = &log[log.find(after)? + after.len()..];
        rest[..rest.find(unit)?].trim().parse().ok()
    };
    match (
        figure("every page is in:", "MiB on faults"),
        figure("on faults,", "MiB pushed"),
    ) {
        (Some(faulted), Some(pushed)) => (faulted, pushed),
        _ => panic!("the daemon's log does not say what it served: {log:?}"),
    }
}

/// Asks the workload for its digest now and returns it.
async fn digest_now(client: &mut support::Runtime, cid: &str) -> Vec<u8> {
    let (_, code) = exec(client, cid, &["touch", "/tmp/verify"]).await;
    assert_eq!(code, 0);
    let done = eventually(Duration::from_secs(60), || {
        let mut client = client.clone();
        async move { exec(&mut client, cid, &["test", "-e", "/tmp/digest.after"]).await.1 == 0 }
    })
    .await;
    assert!(done, "the restored workload never wrote its digest");
    exec(client, cid, &["cat", "/tmp/digest.after"]).await.0
}

#[tokio::test]
#[serial]
async fn a_lazily_restored_pod_has_every_byte_of_its_memory() {
    let Some(tb) = testbed() else { return };
    let shim = Shim::start(&tb);
    let mut client = shim.client().await;
    let source = checkpointed_digest(&shim, &tb).await;

    let (_pod, cid) = restore_lazily(&shim, &source.dir, "true").await;
    support::start_restored(&shim, &cid).await;
    assert_eq!(restore_record(&cid)["lazy_pages"], true);
    // Asked at once, so that most pages come on first touch, not from the
    // background push.
    assert_eq!(
        String::from_utf8_lossy(&digest_now(&mut client, &cid).await),
        String::from_utf8_lossy(&source.digest),
        "the restored memory differs from the checkpointed memory"
    );
    assert!(
        none_left(&source.dir).await,
        "the daemon did not end once every page was in"
    );
    let state = support::container_status(&mut client, &cid).await.state;
    assert_eq!(state, cri::ContainerState::ContainerRunning as i32);
    let (faulted, _) = served(&tb, &cid);
    assert!(faulted > 0.0, "no page came on a fault");

    // Lazy, and asked only once the daemon is done: every page came from
    // the background push.
    let (_idle_pod, idle) = restore_lazily(&shim, &source.dir, "true").await;
    support::start_restored(&shim, &idle).await;
    assert!(
        none_left(&source.dir).await,
        "the daemon did not end once every page was in"
    );
    let (_, pushed) = served(&tb, &idle);
    assert!(pushed > 0.0, "nothing was pushed in the background");
    assert_eq!(digest_now(&mut client, &idle).await, source.digest);

    // Eager, for comparison: the same digest.
    let (_eager_pod, eager) = restore_lazily(&shim, &source.dir, "false").await;
    support::start_restored(&shim, &eager).await;
    assert_eq!(restore_record(&eager)["lazy_pages"], false);
    assert!(
        support::lazy_processes(&source.dir).is_empty(),
        "an eager restore started a lazy-pages daemon"
    );
    assert_eq!(digest_now(&mut client, &eager).await, source.digest);
}

/// Restores lazily, starts, and stops the daemon before it is done, so that each case
/// below happens while pages are still missing. The daemon pushes 256 MiB
/// in well under a second, so a restore whose daemon was already done is
/// tried again.
async fn restore_with_daemon_stopped(shim: &Shim, checkpoint: &Path) -> (Pod, String, i32) {
    for _ in 0..5 {
        let (pod, cid) = restore_lazily(shim, checkpoint, "true").await;
        // containerd creates the task, and so restores, on StartContainer.
        support::start_restored(shim, &cid).await;
        if let Some(daemon) = support::page_daemon(checkpoint)
            && kill(Pid::from_raw(daemon), Signal::SIGSTOP).is_ok()
            && support::page_daemon(checkpoint) == Some(daemon)
        {
            return (pod, cid, daemon);
        }
        drop(pod);
        assert!(none_left(checkpoint).await);
    }
    panic!("the lazy-pages daemon was done before it could be stopped, five times");
}

#[tokio::test]
#[serial]
async fn the_page_daemon_lives_and_dies_with_its_container() {
    let Some(mut tb_shim) = testbed().map(|tb| (Shim::start(&tb), tb)) else {
        return;
    };
    let (shim, tb) = (&mut tb_shim.0, &tb_shim.1);
    let source = checkpointed_digest(shim, tb).await;

    // The daemon dies early: the container is killed, and its log says why.
    let (pod, cid, daemon) = restore_with_daemon_stopped(shim, &source.dir).await;
    kill(Pid::from_raw(daemon), Signal::SIGKILL).unwrap();
    let mut client = shim.client().await;
    let exited = eventually(Duration::from_secs(10), || {
        let mut client = client.clone();
        let cid = cid.clone();
        async move {
            support::container_status(&mut client, &cid).await.state == cri::ContainerState::ContainerExited as i32
        }
    })
    .await;
    assert!(exited, "the container ran on after its page daemon died");
    let status = support::container_status(&mut client, &cid).await;
    assert_eq!(status.exit_code, 137, "killed, not exited of its own accord");
    let log = std::fs::read_to_string(pod.log_dir().join("holder.log")).unwrap_or_default();
    assert!(
        log.contains("lazy-pages daemon was killed by SIGKILL"),
        "the container's log does not say why it was killed: {log:?}"
    );
    assert!(none_left(&source.dir).await, "the supervisor outlived its container");
    drop(pod);

    // The container is removed first: the daemon goes with it.
    let (pod, _cid, _daemon) = restore_with_daemon_stopped(shim, &source.dir).await;
    drop(pod);
    assert!(none_left(&source.dir).await, "the daemon outlived its container");

    // podckptd restarts while pages are still coming: nothing is lost.
    let (_pod, cid, daemon) = restore_with_daemon_stopped(shim, &source.dir).await;
    shim.restart(tb);
    kill(Pid::from_raw(daemon), Signal::SIGCONT).unwrap();
    let mut client = shim.client().await;
    assert_eq!(digest_now(&mut client, &cid).await, source.digest);
    assert!(none_left(&source.dir).await);
}

#[tokio::test]
#[serial]
async fn lazy_pages_is_refused_where_the_runtime_cannot() {
    let Some(tb) = testbed() else { return };
    let shim = Shim::start_with(&tb, support::CRUN_HANDLERS, 5);
    let (_keep, checkpoint, _) = support::checkpointed(
        &shim,
        "crun",
        support::container_config("counter", &tb.image, support::COUNTER),
        2,
    )
    .await;
    let mut pods = support::sandboxes(&mut shim.client().await).await.len();
    for (value, code) in [
        ("true", tonic::Code::FailedPrecondition),
        ("maybe", tonic::Code::InvalidArgument),
    ] {
        let mut call = RestoreCall::new(
            &checkpoint,
            &support::checkpointed_configs(&checkpoint, &["counter"]),
            "podckpt-crun",
        );
        call.request.options.insert(LAZY_PAGES.into(), value.into());
        let err = call
            .send(&shim, Some(Duration::from_secs(60)))
            .await
            .err()
            .expect("refused");
        assert_eq!(err.code(), code, "{value}: {}", err.message());
        assert!(err.message().contains(LAZY_PAGES), "{}", err.message());
        assert_eq!(
            support::sandboxes(&mut shim.client().await).await.len(),
            pods,
            "a refused restore made a sandbox"
        );
        pods = support::sandboxes(&mut shim.client().await).await.len();
    }
    // Unset, a crun handler restores eagerly.
    let (_pod, cid) = support::restore_and_start_on(&shim, &checkpoint, "counter", "podckpt-crun").await;
    assert_eq!(restore_record(&cid)["lazy_pages"], false);
}
