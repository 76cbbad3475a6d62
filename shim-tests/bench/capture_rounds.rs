//! Round after round of one CheckpointPod, to catch a capture that fails
//! now and then, with the machine idle or busy:
//!
//!   cargo bench --bench capture_rounds [-- [--crio] [--rounds N] [--busy]]
//!
//! A two-container pod, 64 MiB held in each (the case in which one round of
//! five once failed with "criu failed: type NOTIFY errno 0"), checkpointed N
//! times (default 50) into a new directory each, which is then removed.
//! `--busy` keeps the machine busy meanwhile: two CPU-bound loops and a
//! writer to the disk the checkpoints go to. Every failure is printed with
//! its message, which names CRIU's reason and where its whole log is kept.
//! Prints a Markdown report.

#[path = "../support/mod.rs"]
mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Processes that keep the machine busy until dropped.
struct Load(Vec<Child>);

impl Load {
    fn start(scratch: &std::path::Path) -> Self {
        let spin = || {
            Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdout(Stdio::null())
                .spawn()
                .expect("a CPU loop")
        };
        let file = scratch.join("load");
        let writer = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while :; do dd if=/dev/zero of={} bs=1M count=256 conv=fsync 2>/dev/null; done",
                file.display()
            ))
            .spawn()
            .expect("a disk writer");
        Self(vec![spin(), spin(), writer])
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some((tb, shim)) = support::bench_shim("") else {
        return;
    };
    let rounds: usize = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse().expect("a number of rounds"))
        .unwrap_or(50);
    let busy = args.iter().any(|a| a == "--busy");
    let mut client = shim.client().await;
    let scratch = tempfile::tempdir_in("/var/tmp").unwrap();
    let (pod, a, b) = support::two_counters(&mut client, &shim, &tb, "pair").await;
    for cid in [&a, &b] {
        assert!(support::count_reaches(&client, cid, 1, Duration::from_secs(120)).await);
    }
    let _load = busy.then(|| Load::start(scratch.path()));
    let (mut seconds, mut failures) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let out = scratch.path().join(format!("round-{round}"));
        std::fs::create_dir(&out).unwrap();
        let started = Instant::now();
        match support::checkpoint_pod(&shim, &pod.id, &out, &[], &[]).await {
            Ok(()) => seconds.push(started.elapsed().as_secs_f64()),
            Err(status) => failures.push((round, status)),
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
    println!(
        "## {rounds} rounds of CheckpointPod, two containers of 64 MiB ({}, {})\n",
        tb.runtime_name().await,
        if busy { "machine busy" } else { "machine idle" }
    );
    println!("| rounds | passed | failed | median s |");
    println!("|---|---|---|---|");
    let median = if seconds.is_empty() {
        0.0
    } else {
        support::median(seconds.clone())
    };
    println!("| {rounds} | {} | {} | {median:.3} |", seconds.len(), failures.len());
    for (round, status) in &failures {
        println!("\nround {round}: {:?}: {}", status.code(), status.message());
    }
}
