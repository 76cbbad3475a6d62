//! Restore-to-running and time-to-resident, lazy against eager, for a
//! workload that touches little of its memory and one that reads all of it
//! at once, in the same run, on the test bed.
//!
//!   cargo bench --bench restore_to_running [-- [--crio] [--sizes 64,1024,4096] [--workloads little,all]]
//!
//! A container holding N MiB in a shell variable writes a counter to
//! /tmp/count every 10 ms: "little" only counts; "all" takes the variable's
//! length before each write, which reads every byte of it. It is
//! checkpointed once (durable). Then, alternating `podckpt.io/lazy-pages`
//! `false` and `true`, each round sends RestorePod, then StartContainer, and
//! polls the container's /tmp/count from the host (its rootfs, every
//! millisecond) until the value is past the checkpointed one: restore-to-
//! running is RestorePod's start until then (containerd restores during
//! StartContainer, CRI-O during RestorePod, so only the sum is comparable
//! across runtimes; StartContainer → running is shown for containerd).
//! Time-to-resident is RestorePod's start until the page daemon has exited
//! (every page in); an eager restore is resident once it runs. A lazy round
//! waits for its daemon before the next round starts.
//!
//! Prints a Markdown report with medians.

#[path = "../support/mod.rs"]
mod support;

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use podckpt::api::cri;
use podckpt::pod::options::LAZY_PAGES;
use support::{Pod, RestoreCall, Shim, Testbed};

const ROUNDS: usize = 5;

/// The container's command: holds `mib` MiB and writes a counter every
/// 10 ms, so that the time it next writes is known to within a few
/// milliseconds; with `all`, each write follows a read of all the memory.
fn workload(mib: u64, all: bool) -> String {
    let counter = support::memory_counter(mib).replace("sleep 0.2", "sleep 0.01");
    if all {
        counter.replace("echo $i > /tmp/count", "[ ${#x} -gt 0 ] && echo $i > /tmp/count")
    } else {
        counter
    }
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

struct Round {
    start_to_running: f64,
    to_running: f64,
    to_resident: f64,
}

async fn round(tb: &Testbed, shim: &Shim, checkpoint: &Path, saved: u64, lazy: bool) -> Round {
    let mut call = RestoreCall::new(
        checkpoint,
        &support::checkpointed_configs(checkpoint, &["mem"]),
        "podckpt",
    );
    call.request.options.insert(LAZY_PAGES.into(), lazy.to_string());
    let began = Instant::now();
    let (pod, restored) = call
        .send(shim, Some(Duration::from_secs(300)))
        .await
        .expect("RestorePod");
    let cid = restored[0].container_id.clone();
    let mut client = shim.client().await;
    let started = Instant::now();
    client
        .start_container(cri::StartContainerRequest {
            container_id: cid.clone(),
        })
        .await
        .expect("StartContainer");
    let file = support::container_rootfs(tb, &cid).join("tmp/count");
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
    let (start_to_running, to_running) = (started.elapsed().as_secs_f64(), began.elapsed().as_secs_f64());
    let record = tb.runc_root.join(&cid).join(podckpt::interposer::RESTORE_RECORD);
    let record: serde_json::Value = serde_json::from_slice(&std::fs::read(record).expect("restore record")).unwrap();
    assert_eq!(record["lazy_pages"], lazy);
    // Found once, then watched by its /proc entry alone: a scan of /proc
    // every millisecond costs a core, which the daemon (in the pod's cgroup
    // on CRI-O, at the weight of a best-effort pod) would lose to.
    if let Some(daemon) = support::page_daemon(checkpoint) {
        while Path::new(&format!("/proc/{daemon}")).exists() {
            assert!(
                began.elapsed() < Duration::from_secs(300),
                "the lazy-pages daemon never finished"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let to_resident = began.elapsed().as_secs_f64().max(to_running);
    if lazy {
        let log = support::page_daemon_log(tb, &cid);
        eprintln!("{cid:.12}: {}", log.lines().last().unwrap_or("(no log)"));
    }
    drop(pod);
    Round {
        start_to_running,
        to_running,
        to_resident,
    }
}

fn list<T: std::str::FromStr>(args: &[String], flag: &str, default: &str) -> Vec<T>
where
    T::Err: std::fmt::Debug,
{
    let value = args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1));
    value
        .map_or(default, String::as_str)
        .split(',')
        .map(|n| n.parse().expect(flag))
        .collect()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some((tb, shim)) = support::bench_shim("") else {
        return;
    };
    let sizes: Vec<u64> = list(&args, "--sizes", "64,1024,4096");
    let workloads: Vec<String> = list(&args, "--workloads", "little,all");
    let mut client = shim.client().await;
    let scratch = tempfile::tempdir().unwrap();

    println!(
        "| workload | memory | eager: to running | lazy: to running | lazy / eager | eager: StartContainer → running | lazy: StartContainer → running | lazy: to resident | lazy resident / eager |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for workload_name in &workloads {
        let all = workload_name == "all";
        let mut lazy_running = Vec::new();
        for &mib in &sizes {
            let pod = Pod::run(&mut client, &shim.socket, &format!("bench-{workload_name}-{mib}")).await;
            let cid = pod
                .start_container(&mut client, &tb.image, "mem", &workload(mib, all))
                .await;
            let counting = support::count_reaches(&client, &cid, 2, Duration::from_secs(600)).await;
            assert!(counting, "the {mib} MiB container did not start counting");
            let checkpoint = scratch.path().join(format!("ckpt-{workload_name}-{mib}"));
            std::fs::create_dir(&checkpoint).unwrap();
            support::checkpoint_pod(&shim, &pod.id, &checkpoint, &[], &[])
                .await
                .expect("CheckpointPod");
            drop(pod);
            let saved = checkpointed_count(&checkpoint);
            let (mut eager, mut lazy) = (Vec::new(), Vec::new());
            for _ in 0..ROUNDS {
                eager.push(round(&tb, &shim, &checkpoint, saved, false).await);
                lazy.push(round(&tb, &shim, &checkpoint, saved, true).await);
            }
            let m = |rounds: &[Round], f: fn(&Round) -> f64| support::median(rounds.iter().map(f).collect());
            let (e, l) = (m(&eager, |r| r.to_running), m(&lazy, |r| r.to_running));
            let resident = m(&lazy, |r| r.to_resident);
            lazy_running.push((mib, l));
            println!(
                "| {workload_name} | {mib} MiB | {e:.3} s | {l:.3} s | {:.2} | {:.3} s | {:.3} s | {resident:.3} s | {:.2} |",
                l / e,
                m(&eager, |r| r.start_to_running),
                m(&lazy, |r| r.start_to_running),
                resident / m(&eager, |r| r.to_resident),
            );
            std::fs::remove_dir_all(&checkpoint).unwrap();
        }
        let at = |size: u64| lazy_running.iter().find(|(mib, _)| *mib == size).map(|(_, s)| *s);
        if let (Some(small), Some(big)) = (at(64), at(4096)) {
            println!(
                "\n{workload_name}: lazy, 4 GiB / 64 MiB to running: {:.2}\n",
                big / small
            );
        }
    }
}
