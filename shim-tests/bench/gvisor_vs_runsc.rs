//! gVisor pods: CheckpointPod and RestorePod against bare runsc, in the same
//! run, on the test bed.
//!
//!   cargo bench --bench gvisor_vs_runsc
//!
//! For a gVisor pod whose container holds 64, 256 and 1024 MiB, 5 rounds each,
//! medians:
//! - checkpoint: `runsc checkpoint --leave-running` of the sandbox, alone and
//!   plus a sync of its image, against CheckpointPod through the shim
//!   (durable), alternating;
//! - restore: RestorePod plus StartContainer, against the `runsc restore`
//!   calls that podckpt-runsc ran inside it (the sandbox's and the
//!   container's, timed by podckpt-runsc and recorded beside runsc's state).
//!
//! Prints a Markdown report.

#[path = "../support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use podckpt::api::cri;
use support::{GVISOR_HANDLER as HANDLER, Pod, RUNSC_ROOT, RestoreCall, Shim};

const ROUNDS: usize = 5;

/// Seconds of a bare `runsc checkpoint` of the sandbox, and of it plus a
/// sync of its image.
fn bare_checkpoint(sandbox: &str, scratch: &Path) -> (f64, f64) {
    let images = scratch.join("bare-image");
    std::fs::create_dir_all(&images).unwrap();
    let started = Instant::now();
    let status = Command::new("runsc")
        .args(["--root", RUNSC_ROOT, "checkpoint", "--leave-running", "--image-path"])
        .arg(&images)
        .arg(sandbox)
        .status()
        .unwrap();
    let dumped = started.elapsed().as_secs_f64();
    assert!(status.success(), "bare runsc checkpoint failed");
    podckpt::archive::durable::sync_tree(&images).expect("syncing the bare image");
    let synced = started.elapsed().as_secs_f64();
    std::fs::remove_dir_all(&images).unwrap();
    (dumped, synced)
}

fn engine_seconds(id: &str) -> f64 {
    let record = Path::new(RUNSC_ROOT)
        .join("podckpt-waiters")
        .join(id)
        .join(podckpt::interposer::RESTORE_RECORD);
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(record).expect("restore record")).unwrap();
    record["runtime_restore_seconds"].as_f64().unwrap()
}

/// RestorePod + StartContainer, and the bare runsc restores inside it.
async fn restore(shim: &Shim, checkpoint: &Path) -> (f64, f64) {
    let mut client = shim.client().await;
    let call = RestoreCall::new(
        checkpoint,
        &support::checkpointed_configs(checkpoint, &["mem"]),
        "gvisor",
    );
    let started = Instant::now();
    let (pod, restored) = call
        .send(shim, Some(Duration::from_secs(300)))
        .await
        .expect("RestorePod");
    let cid = restored[0].container_id.clone();
    client
        .start_container(cri::StartContainerRequest {
            container_id: cid.clone(),
        })
        .await
        .expect("StartContainer");
    let total = started.elapsed().as_secs_f64();
    let bare = engine_seconds(&pod.id) + engine_seconds(&cid);
    assert!(
        support::count_reaches(&client, &cid, 2, Duration::from_secs(30)).await,
        "the restored container is not counting"
    );
    drop(pod);
    (total, bare)
}

#[tokio::main]
async fn main() {
    let Some((tb, shim)) = support::bench_shim(HANDLER) else {
        return;
    };
    let mut client = shim.client().await;
    let scratch = tempfile::tempdir().unwrap();
    println!(
        "| memory | bare runsc checkpoint s | + sync s | durable CheckpointPod s | ratio to bare | ratio to bare + sync | bare runsc restores s | RestorePod + StartContainer s | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for mib in [64u64, 256, 1024] {
        let pod = Pod::run_on(&mut client, &shim.socket, &format!("gvbench{mib}"), "gvisor").await;
        let cid = pod
            .start_container(&mut client, &tb.image, "mem", &support::memory_counter(mib))
            .await;
        assert!(
            support::count_reaches(&client, &cid, 2, Duration::from_secs(300)).await,
            "the {mib} MiB container did not start counting"
        );
        let out = scratch.path().join(format!("ckpt-{mib}"));
        let (mut bare, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            bare.push(bare_checkpoint(&pod.id, scratch.path()));
            let _ = std::fs::remove_dir_all(&out);
            std::fs::create_dir_all(&out).unwrap();
            let started = Instant::now();
            support::checkpoint_pod_exactly(&shim, &pod.id, &out, vec![cid.clone()], &[])
                .await
                .expect("CheckpointPod");
            ours.push(started.elapsed().as_secs_f64());
        }
        drop(pod);
        let mut restores = Vec::new();
        for _ in 0..ROUNDS {
            restores.push(restore(&shim, &out).await);
        }
        let dump = support::median(bare.iter().map(|b| b.0).collect());
        let synced = support::median(bare.iter().map(|b| b.1).collect());
        let checkpoint = support::median(ours);
        let total = support::median(restores.iter().map(|r| r.0).collect());
        let engine = support::median(restores.iter().map(|r| r.1).collect());
        println!(
            "| {mib} MiB | {dump:.3} | {synced:.3} | {checkpoint:.3} | {:.2} | {:.2} | {engine:.3} | {total:.3} | {:.2} |",
            checkpoint / dump,
            checkpoint / synced,
            total / engine
        );
        std::fs::remove_dir_all(&out).unwrap();
    }
}
