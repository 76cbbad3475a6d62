//! Restore-to-running, lazy against eager, in the same run, on the test bed.
//!
//!   cargo bench --bench restore_to_running [-- --sizes 64,256,1024,4096]
//!
//! A container holding N MiB counts into /tmp/count every 10 ms; it is
//! checkpointed once. Then, alternating `podckpt.io/lazy-pages=true` and
//! `false`, each round sends RestorePod, then StartContainer, and polls the
//! container's /tmp/count from the host (its rootfs, every millisecond)
//! until the value is past the checkpointed one. containerd creates the task,
//! and so podckpt-runc restores, on StartContainer, so "restore-to-running"
//! is StartContainer until the restored process writes again. A lazy round
//! then waits for its page daemon to finish before the next round starts.
//!
//! Prints a Markdown report with medians.

#[path = "../support/mod.rs"]
mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use podckpt::api::cri;
use podckpt::pod::options::LAZY_PAGES;
use support::{Pod, RestoreCall, Shim};

const ROUNDS: usize = 5;

/// A counter that holds `mib` MiB and writes every 10 ms, so that the time
/// it next writes is known to within a few milliseconds.
fn fast_memory_counter(mib: u64) -> String {
    support::memory_counter(mib).replace("sleep 0.2", "sleep 0.01")
}

/// The counter value the checkpoint holds: /tmp/count in its rootfs diff.
fn checkpointed_count(checkpoint: &Path) -> u64 {
    let folder = std::fs::read_dir(checkpoint)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a container folder");
    let file = std::fs::File::open(folder.join(podckpt::archive::ROOTFS_DIFF)).expect("rootfs diff");
    let mut archive = tar::Archive::new(file);
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().ends_with("tmp/count") {
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            return text.trim().parse().expect("a count");
        }
    }
    panic!("no /tmp/count in the rootfs diff")
}

/// Where the host sees the running container's /tmp/count.
fn count_file(cid: &str) -> PathBuf {
    Path::new("/run/podckpt-testbed/containerd/io.containerd.runtime.v2.task/k8s.io")
        .join(cid)
        .join("rootfs/tmp/count")
}

struct Round {
    restore_pod: f64,
    to_running: f64,
    bare: f64,
}

async fn round(shim: &Shim, checkpoint: &Path, saved: u64, lazy: bool) -> Round {
    let mut call = RestoreCall::new(
        checkpoint,
        &support::checkpointed_configs(checkpoint, &["mem"]),
        "podckpt",
    );
    call.request.options.insert(LAZY_PAGES.into(), lazy.to_string());
    let started = Instant::now();
    let (pod, restored) = call
        .send(shim, Some(Duration::from_secs(300)))
        .await
        .expect("RestorePod");
    let restore_pod = started.elapsed().as_secs_f64();
    let cid = restored[0].container_id.clone();
    let mut client = shim.client().await;
    let started = Instant::now();
    client
        .start_container(cri::StartContainerRequest {
            container_id: cid.clone(),
        })
        .await
        .expect("StartContainer");
    let file = count_file(&cid);
    loop {
        let value = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        if value.is_some_and(|v| v > saved) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the restored counter never moved"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let to_running = started.elapsed().as_secs_f64();
    let record = Path::new(support::RUNC_ROOT)
        .join(&cid)
        .join(podckpt::interposer::RESTORE_RECORD);
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(record).expect("restore record")).unwrap();
    assert_eq!(record["lazy_pages"], lazy);
    let bare = record["runtime_restore_seconds"].as_f64().unwrap();
    if lazy {
        // The next round must not share the disk and CPU with this one's
        // background push.
        let done = support::eventually(Duration::from_secs(300), || async { !daemon_running(checkpoint) }).await;
        assert!(done, "the lazy-pages daemon never finished");
    }
    drop(pod);
    Round {
        restore_pod,
        to_running,
        bare,
    }
}

fn daemon_running(checkpoint: &Path) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline")).is_ok_and(|cmdline| {
            let text = String::from_utf8_lossy(&cmdline);
            text.contains("lazy-pages\0") && text.contains(checkpoint.to_str().unwrap())
        })
    })
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some((tb, shim)) = support::bench_shim("") else {
        return;
    };
    let sizes: Vec<u64> = args
        .iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(|n| n.parse().expect("MiB")).collect())
        .unwrap_or_else(|| vec![64, 256, 1024, 4096]);
    let mut client = shim.client().await;
    let scratch = tempfile::tempdir().unwrap();

    println!(
        "| memory | eager: StartContainer → running s | lazy: StartContainer → running s | lazy / eager | eager: runc restore s | lazy: runc restore s | eager: RestorePod s | lazy: RestorePod s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut lazy_running = Vec::new();
    for &mib in &sizes {
        let pod = Pod::run(&mut client, &shim.socket, &format!("bench{mib}")).await;
        let cid = pod
            .start_container(&mut client, &tb.image, "mem", &fast_memory_counter(mib))
            .await;
        let counting = support::count_reaches(&client, &cid, 2, Duration::from_secs(600)).await;
        assert!(counting, "the {mib} MiB container did not start counting");
        let checkpoint = scratch.path().join(format!("ckpt-{mib}"));
        std::fs::create_dir(&checkpoint).unwrap();
        support::checkpoint_pod(&shim, &pod.id, &checkpoint, &[], &[])
            .await
            .expect("CheckpointPod");
        drop(pod);
        let saved = checkpointed_count(&checkpoint);
        let (mut eager, mut lazy) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            eager.push(round(&shim, &checkpoint, saved, false).await);
            lazy.push(round(&shim, &checkpoint, saved, true).await);
        }
        let m = |rounds: &[Round], f: fn(&Round) -> f64| support::median(rounds.iter().map(f).collect());
        let (e, l) = (m(&eager, |r| r.to_running), m(&lazy, |r| r.to_running));
        lazy_running.push((mib, l));
        println!(
            "| {mib} MiB | {e:.3} | {l:.3} | {:.2} | {:.3} | {:.3} | {:.3} | {:.3} |",
            l / e,
            m(&eager, |r| r.bare),
            m(&lazy, |r| r.bare),
            m(&eager, |r| r.restore_pod),
            m(&lazy, |r| r.restore_pod),
        );
        std::fs::remove_dir_all(&checkpoint).unwrap();
    }
    let at = |size: u64| lazy_running.iter().find(|(mib, _)| *mib == size).map(|(_, s)| *s);
    if let Some(gib) = at(1024) {
        println!(
            "\nlazy, 1 GiB: {gib:.3} s to running (target ≤ 0.35 s: {})",
            if gib <= 0.35 { "met" } else { "missed" }
        );
    }
    if let (Some(small), Some(big)) = (at(64), at(4096)) {
        println!(
            "lazy, 4 GiB / 64 MiB: {:.2} (target ≤ 1.5: {})",
            big / small,
            if big <= 1.5 * small { "met" } else { "missed" }
        );
    }
}
