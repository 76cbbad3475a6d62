//! CheckpointPod and RestorePod against bare runc, in the same run, on the test bed.
//!
//!   cargo bench --bench checkpoint_vs_runc [-- --crio]
//!
//! With `--crio`, on the test bed's CRI-O instead of its containerd.
//!
//! For the demo's counter (no memory of its own) and containers holding
//! 64, 256 and 1024 MiB:
//! - checkpoint: CheckpointPod through the shim (durable: synced before it
//!   answers) against `runc checkpoint --leave-running` of the same
//!   container plus a sync of its images, alternating;
//! - the pod's freeze window (from the manifest) against CRIU's own
//!   `frozen_time` of the bare dump, as runc runs CRIU by default and as
//!   podckpt runs it for a container without TCP sockets (no network lock),
//!   and against CRIU's `frozen_time` inside the CheckpointPod itself (what
//!   is left is runc's and CRIU's start and exit);
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
/// the work directory; podckpt keeps it in the container's folder), in
/// seconds.
fn criu_frozen_seconds(stats: &Path) -> f64 {
    support::crit_decode(stats)["entries"][0]["dump"]["frozen_time"]
        .as_f64()
        .expect("frozen_time in stats-dump")
        / 1e6
}

/// CRIU's configuration for a dump without its network lock, as podckpt
/// dumps a container that holds no TCP socket.
fn unlocked_config(scratch: &Path) -> std::path::PathBuf {
    let path = scratch.join("no-network-lock.conf");
    std::fs::write(&path, podckpt::backend::runc::NO_NETWORK_LOCK).unwrap();
    path
}

/// A bare `runc checkpoint`, with CRIU's defaults or, given `config`, with
/// that CRIU configuration file.
fn bare_checkpoint(root: &Path, cid: &str, scratch: &Path, config: Option<&Path>) -> Bare {
    let images = scratch.join("bare-images");
    let work = scratch.join("bare-work");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let mut runc = Command::new("runc");
    if let Some(config) = config {
        runc.env("CRIU_CONFIG_FILE", config);
    }
    let started = Instant::now();
    let status = runc
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
    let frozen = criu_frozen_seconds(&work.join("stats-dump"));
    std::fs::remove_dir_all(&images).unwrap();
    std::fs::remove_dir_all(&work).unwrap();
    Bare { dumped, synced, frozen }
}

/// One CheckpointPod, in seconds.
struct Ours {
    total: f64,
    /// The pod's freeze window, from its manifest.
    freeze: f64,
    /// CRIU's own frozen_time inside it, summed over the containers.
    frozen: f64,
}

async fn podckpt_checkpoint(shim: &Shim, pod: &str, ids: &[&str], out: &Path) -> Ours {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    let started = Instant::now();
    checkpoint_pod(shim, pod, out, ids, &[]).await.expect("CheckpointPod");
    let total = started.elapsed().as_secs_f64();
    let freeze_ms = support::read_manifest(out).freeze_ms.expect("the freeze window");
    let frozen = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path().join(podckpt::archive::STATS_DUMP))
        .filter(|stats| stats.exists())
        .map(|stats| criu_frozen_seconds(&stats))
        .sum();
    Ours {
        total,
        freeze: freeze_ms as f64 / 1000.0,
        frozen,
    }
}

/// The freeze target: 1.05 times CRIU's own frozen time in a bare dump,
/// plus 20 ms; by how much it was met or missed.
fn freeze_verdict(freeze: f64, dump: f64) -> String {
    let target = 1.05 * dump + 0.020;
    let by = ((freeze - target).abs() * 1000.0).round();
    if freeze <= target {
        format!("met ({by} ms under)")
    } else {
        format!("missed by {by} ms")
    }
}

/// The freeze-window columns of a report row: against the bare dump's
/// frozen_time with CRIU's defaults and without the network lock, and what
/// is left over CRIU's own frozen_time inside CheckpointPod.
fn freeze_columns(freeze: f64, bare: f64, unlocked: f64, inside: f64) -> String {
    format!(
        "{freeze:.3} | {bare:.3} | {:.2} | {} | {unlocked:.3} | {:.2} | {} | {inside:.3} | {:.0} ms",
        freeze / bare,
        freeze_verdict(freeze, bare),
        freeze / unlocked,
        freeze_verdict(freeze, unlocked),
        (freeze - inside) * 1000.0
    )
}

const FREEZE_HEADER: &str = "| freeze window s | CRIU frozen_time, bare s | ratio | ≤ 1.05 × + 20 ms | CRIU frozen_time, bare without network lock s | ratio | ≤ 1.05 × + 20 ms | CRIU frozen_time inside CheckpointPod s | window − it |";

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

    let unlocked = unlocked_config(scratch.path());
    let (mut restore_rows, mut freeze_rows) = (Vec::new(), Vec::new());
    println!("| memory | bare runc checkpoint s | + sync s | durable CheckpointPod s | ratio to checkpoint + sync |");
    println!("|---|---|---|---|---|");
    // 0: the demo's counter, a shell and its sleep, nothing more.
    for mib in [0u64, 64, 256, 1024] {
        let label = if mib == 0 {
            "the demo's counter".to_owned()
        } else {
            format!("{mib} MiB")
        };
        let pod = Pod::run(&mut client, &shim.socket, &format!("bench{mib}")).await;
        let cid = pod
            .start_container(&mut client, &tb.image, "mem", &support::memory_counter(mib))
            .await;
        wait_counting(&client, &cid).await;
        let out = scratch.path().join(format!("ckpt-{mib}"));
        let (mut bare, mut bare_unlocked, mut ours) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            bare.push(bare_checkpoint(&tb.runc_root, &cid, scratch.path(), None));
            bare_unlocked.push(bare_checkpoint(&tb.runc_root, &cid, scratch.path(), Some(&unlocked)));
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
        let frozen_unlocked = support::median(bare_unlocked.iter().map(|b| b.frozen).collect());
        let total = support::median(ours.iter().map(|o| o.total).collect());
        let freeze = support::median(ours.iter().map(|o| o.freeze).collect());
        let inside = support::median(ours.iter().map(|o| o.frozen).collect());
        println!(
            "| {label} | {dump:.3} | {synced:.3} | {total:.3} | {:.2} |",
            total / synced
        );
        freeze_rows.push(format!(
            "| {label} | {} |",
            freeze_columns(freeze, frozen, frozen_unlocked, inside)
        ));
        let restore_columns = |runs: Vec<(f64, f64)>| {
            let total = support::median(runs.iter().map(|r| r.0).collect());
            let bare = support::median(runs.iter().map(|r| r.1).collect());
            format!("{bare:.3} | {total:.3} | {:.2}", total / bare)
        };
        restore_rows.push(format!(
            "| {label} | {} | {} |",
            restore_columns(sealed),
            restore_columns(copied)
        ));
        std::fs::remove_dir_all(&out).unwrap();
    }
    println!();
    println!("| memory {FREEZE_HEADER}");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in freeze_rows {
        println!("{row}");
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
    let (mut whole, mut alone, mut freezes, mut insides, mut dumps, mut frozens, mut frozens_unlocked) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for _ in 0..ROUNDS {
        let pair = podckpt_checkpoint(&shim, &pod.id, &[], &out).await;
        whole.push(pair.total);
        freezes.push(pair.freeze);
        insides.push(pair.frozen);
        let first = podckpt_checkpoint(&shim, &pod.id, &[&a], &out).await.total;
        let second = podckpt_checkpoint(&shim, &pod.id, &[&b], &out).await.total;
        alone.push(first + second);
        let bare = |cid: &str, config: Option<&Path>| bare_checkpoint(&tb.runc_root, cid, scratch.path(), config);
        let (bare_a, bare_b) = (bare(&a, None), bare(&b, None));
        dumps.push(bare_a.dumped + bare_b.dumped);
        frozens.push(bare_a.frozen + bare_b.frozen);
        frozens_unlocked.push(bare(&a, Some(&unlocked)).frozen + bare(&b, Some(&unlocked)).frozen);
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
    println!();
    println!("| two containers, 64 MiB each, CRIU's frozen_time of both dumps summed {FREEZE_HEADER}");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    println!(
        "| the whole pod | {} |",
        freeze_columns(
            freeze,
            frozen,
            support::median(frozens_unlocked),
            support::median(insides)
        )
    );
    drop(pod);
}
