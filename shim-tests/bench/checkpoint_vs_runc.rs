//! CheckpointPod and RestorePod against bare runc, in the same run, on the test bed.
//!
//!   cargo bench --bench checkpoint_vs_runc [-- --crio]
//!
//! With `--crio`, on the test bed's CRI-O instead of its containerd.
//!
//! For containers holding 64, 256 and 1024 MiB:
//! - checkpoint: CheckpointPod through the shim (durable: synced before it
//!   answers) against `runc checkpoint --leave-running` of the same
//!   container plus a sync of its images, alternating; and the pod's freeze
//!   window (from the manifest) against the bare `runc checkpoint` alone;
//! - restore: RestorePod plus StartContainer against the `runc restore` that
//!   podckpt-runc ran inside it (it records its duration beside runc's state),
//!   from the checkpoint as written (sealed) and from a copy of it (hashed in full);
//! - a two-container pod (64 MiB each) against checkpointing each container alone.
//!
//! Prints a Markdown report with medians and ratios.

#[path = "../support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Pod, Shim, checkpoint_pod, count};

const ROUNDS: usize = 5;

async fn wait_counting(client: &support::Runtime, cid: &str) {
    let ok = support::count_reaches(client, cid, 2, Duration::from_secs(180)).await;
    assert!(ok, "container {cid} did not start counting");
}

/// A bare `runc checkpoint`, in seconds.
struct Bare {
    /// runc's whole run.
    dumped: f64,
    /// It, plus syncing its images.
    synced: f64,
    /// CRIU's own account of how long the processes were frozen
    /// (`frozen_time` in its stats-dump image).
    frozen: f64,
}

/// CRIU's `frozen_time` from a dump's stats-dump image (CRIU writes it into
/// the work directory), in seconds.
fn criu_frozen_seconds(work: &Path) -> f64 {
    let out = Command::new("crit")
        .args(["decode", "-i"])
        .arg(work.join("stats-dump"))
        .output()
        .expect("running crit (python3-criu)");
    assert!(
        out.status.success(),
        "crit decode: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("crit's JSON");
    stats["entries"][0]["dump"]["frozen_time"]
        .as_f64()
        .expect("frozen_time in stats-dump")
        / 1e6
}

fn bare_checkpoint(root: &Path, cid: &str, scratch: &Path) -> Bare {
    let images = scratch.join("bare-images");
    let work = scratch.join("bare-work");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let started = Instant::now();
    let status = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["checkpoint", "--leave-running", "--image-path"])
        .arg(&images)
        .arg("--work-path")
        .arg(&work)
        .arg(cid)
        .status()
        .unwrap();
    let dumped = started.elapsed().as_secs_f64();
    assert!(status.success(), "bare runc checkpoint failed");
    podckpt::archive::durable::sync_tree(&images).expect("syncing the bare images");
    let synced = started.elapsed().as_secs_f64();
    let frozen = criu_frozen_seconds(&work);
    std::fs::remove_dir_all(&images).unwrap();
    std::fs::remove_dir_all(&work).unwrap();
    Bare { dumped, synced, frozen }
}

/// Seconds of a CheckpointPod, and of the pod's freeze window in it.
async fn podckpt_checkpoint(shim: &Shim, pod: &str, ids: &[&str], out: &Path) -> (f64, f64) {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    let started = Instant::now();
    checkpoint_pod(shim, pod, out, ids, &[]).await.expect("CheckpointPod");
    let total = started.elapsed().as_secs_f64();
    let freeze_ms = support::read_manifest(out).freeze_ms.expect("the freeze window");
    (total, freeze_ms as f64 / 1000.0)
}

/// The freeze target: 1.05 times CRIU's own frozen time in a bare dump,
/// plus 20 ms.
fn freeze_verdict(freeze: f64, dump: f64) -> &'static str {
    if freeze <= 1.05 * dump + 0.020 { "met" } else { "missed" }
}

/// RestorePod + StartContainer, and the runc restore time recorded inside.
async fn podckpt_restore(shim: &Shim, root: &Path, checkpoint: &Path, name: &str) -> (f64, f64) {
    let mut client = shim.client().await;
    let started = Instant::now();
    let (pod, cid) = support::restore_and_start(shim, checkpoint, name).await;
    let total = started.elapsed().as_secs_f64();
    let record = root.join(&cid).join(podckpt::interposer::RESTORE_RECORD);
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(record).expect("restore record")).unwrap();
    let bare = record["runtime_restore_seconds"].as_f64().unwrap();
    assert!(
        count(&mut client, &cid).await >= 2,
        "the restored container is not counting"
    );
    drop(pod);
    (total, bare)
}

#[tokio::main]
async fn main() {
    let Some((tb, shim)) = support::bench_shim("") else {
        return;
    };
    let mut client = shim.client().await;
    let scratch = tempfile::tempdir().unwrap();

    let mut restore_rows = Vec::new();
    println!(
        "| memory | bare runc checkpoint s | + sync s | durable CheckpointPod s | ratio to checkpoint + sync | freeze window s | freeze / bare checkpoint | CRIU frozen_time s | freeze / frozen_time | freeze ≤ 1.05 × frozen_time + 20 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for mib in [64u64, 256, 1024] {
        let pod = Pod::run(&mut client, &shim.socket, &format!("bench{mib}")).await;
        let cid = pod
            .start_container(&mut client, &tb.image, "mem", &support::memory_counter(mib))
            .await;
        wait_counting(&client, &cid).await;
        let out = scratch.path().join(format!("ckpt-{mib}"));
        let (mut bare, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            bare.push(bare_checkpoint(&tb.runc_root, &cid, scratch.path()));
            ours.push(podckpt_checkpoint(&shim, &pod.id, &[], &out).await);
        }
        drop(pod);
        // Sealed: the checkpoint this node wrote, as a warm start uses it.
        // Copy: the same images at a new path, as from another node, which
        // RestorePod hashes in full.
        let (mut sealed, mut copied) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            sealed.push(podckpt_restore(&shim, &tb.runc_root, &out, "mem").await);
            let copy = scratch.path().join(format!("copy-{mib}-{round}"));
            let status = Command::new("cp").arg("-a").arg(&out).arg(&copy).status().unwrap();
            assert!(status.success(), "copying the checkpoint");
            copied.push(podckpt_restore(&shim, &tb.runc_root, &copy, "mem").await);
            std::fs::remove_dir_all(&copy).unwrap();
        }
        let dump = support::median(bare.iter().map(|b| b.dumped).collect());
        let synced = support::median(bare.iter().map(|b| b.synced).collect());
        let frozen = support::median(bare.iter().map(|b| b.frozen).collect());
        let total = support::median(ours.iter().map(|o| o.0).collect());
        let freeze = support::median(ours.iter().map(|o| o.1).collect());
        println!(
            "| {mib} MiB | {dump:.3} | {synced:.3} | {total:.3} | {:.2} | {freeze:.3} | {:.2} | {frozen:.3} | {:.2} | {} |",
            total / synced,
            freeze / dump,
            freeze / frozen,
            freeze_verdict(freeze, frozen)
        );
        let restore_columns = |runs: Vec<(f64, f64)>| {
            let total = support::median(runs.iter().map(|r| r.0).collect());
            let bare = support::median(runs.iter().map(|r| r.1).collect());
            format!("{bare:.3} | {total:.3} | {:.2}", total / bare)
        };
        restore_rows.push(format!(
            "| {mib} MiB | {} | {} |",
            restore_columns(sealed),
            restore_columns(copied)
        ));
        std::fs::remove_dir_all(&out).unwrap();
    }
    println!();
    println!(
        "| memory | bare runc restore s | RestorePod + StartContainer, sealed s | ratio | bare runc restore s | RestorePod + StartContainer, copy s | ratio |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in restore_rows {
        println!("{row}");
    }

    let (pod, a, b) = support::two_counters(&mut client, &shim, &tb, "bench-pair").await;
    wait_counting(&client, &a).await;
    wait_counting(&client, &b).await;
    let out = scratch.path().join("pair");
    let (mut whole, mut alone, mut freezes, mut dumps, mut frozens) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (total, freeze) = podckpt_checkpoint(&shim, &pod.id, &[], &out).await;
        whole.push(total);
        freezes.push(freeze);
        let first = podckpt_checkpoint(&shim, &pod.id, &[&a], &out).await.0;
        let second = podckpt_checkpoint(&shim, &pod.id, &[&b], &out).await.0;
        alone.push(first + second);
        let (bare_a, bare_b) = (
            bare_checkpoint(&tb.runc_root, &a, scratch.path()),
            bare_checkpoint(&tb.runc_root, &b, scratch.path()),
        );
        dumps.push(bare_a.dumped + bare_b.dumped);
        frozens.push(bare_a.frozen + bare_b.frozen);
    }
    let (w, s) = (support::median(whole), support::median(alone));
    let (freeze, dump, frozen) = (
        support::median(freezes),
        support::median(dumps),
        support::median(frozens),
    );
    println!();
    println!("| two containers, 64 MiB each | whole pod s | each alone, summed s | ratio |");
    println!("|---|---|---|---|");
    println!("| CheckpointPod | {w:.3} | {s:.3} | {:.2} |", w / s);
    println!(
        "| freeze window of the pod, against both bare runc checkpoints, summed | {freeze:.3} | {dump:.3} | {:.2} |",
        freeze / dump,
    );
    println!(
        "| freeze window of the pod, against CRIU's frozen_time of both bare dumps, summed | {freeze:.3} | {frozen:.3} | {:.2} (≤ 1.05 × + 20 ms: {}) |",
        freeze / frozen,
        freeze_verdict(freeze, frozen)
    );
    drop(pod);
}
