//! Restore by annotation, measured in one run on the test bed:
//!
//!   cargo bench --bench restore_by_annotation [-- [--crio] [--rounds N] [--only warm|cost]]
//!
//! 1. **Warm start through the kubelet.** A static pod whose container
//!    computes for 20 s (a busy loop: a stand-in for loading a model) before
//!    it creates /tmp/ready, which its exec readiness probe (every second)
//!    waits for. Cold: the manifest as it is. Warm: the same manifest
//!    annotated `podckpt.io/restore-from`, restored from a checkpoint of the
//!    pod taken once it was ready. Each round times the manifest's placement
//!    to the kubelet's own Ready condition (its /pods, polled every 100 ms);
//!    cold and warm alternate, each round a pod of a name of its own (the
//!    kubelet holds back a static pod while one of the same name is still
//!    being torn down, some 10 s here, which would be measured too).
//! 2. **What the check costs a pod that asks for no restore.** Ordinary
//!    pods (RunPodSandbox, CreateContainer, StartContainer) through a
//!    podckptd with `restore_from_annotation` on, which reads those two
//!    calls whole before it passes them on, and off, alternating.
//!
//! Prints a Markdown report with medians.

#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use podckpt::api::cri;
use support::kubelet::{Kubelet, running};
use support::{Pod, Shim};

/// The stand-in for a slow start: 20 s of computing, then ready.
const LOADING: &str = "t=$(( $(date +%s) + 20 )); while [ $(date +%s) -lt $t ]; do :; done; touch /tmp/ready; \
     i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 1; done";

fn manifest(name: &str, image: &str, restore_from: Option<&str>) -> String {
    let head = support::pod_manifest_head(name, "default", restore_from);
    format!(
        r#"{head}  terminationGracePeriodSeconds: 1
  containers:
  - name: server
    image: {image}
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "{LOADING}"]
    readinessProbe:
      exec:
        command: ["cat", "/tmp/ready"]
      periodSeconds: 1
"#
    )
}

/// Seconds from the manifest's placement to the kubelet's Ready.
async fn to_ready(kubelet: &Kubelet, name: &str, yaml: &str) -> f64 {
    let started = Instant::now();
    kubelet.apply(name, yaml);
    loop {
        let ready = kubelet.pod("default", name).is_some_and(|pod| {
            pod["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        });
        if ready {
            return started.elapsed().as_secs_f64();
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the pod never became ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes the manifest and waits until the kubelet has stopped the pod.
async fn gone(kubelet: &Kubelet, runtime: &support::Runtime, name: &str) {
    kubelet.remove(name);
    let stopped = support::eventually(Duration::from_secs(120), || {
        let mut runtime = runtime.clone();
        async move {
            running(&mut runtime, "default", name, "server", Duration::ZERO)
                .await
                .is_none()
        }
    })
    .await;
    assert!(stopped, "the kubelet did not stop the pod");
}

async fn warm_start(tb: &support::Testbed, rounds: usize) {
    let root = tempfile::tempdir().unwrap();
    let config = format!(
        "restore_from_annotation = true\ncheckpoint_root = \"{}\"\n",
        root.path().display()
    );
    let shim = Shim::start_with(tb, &config, 5);
    support::install_interposer();
    let Some(kubelet) = Kubelet::start(&shim) else { return };
    let runtime = tb.direct().await;

    // The checkpoint: the pod once it is ready.
    let first = to_ready(&kubelet, "model", &manifest("model", &tb.image, None)).await;
    let pod = running(
        &mut runtime.clone(),
        "default",
        "model",
        "server",
        Duration::from_secs(10),
    )
    .await
    .expect("the pod runs");
    let out = support::podckpt_cli(&shim, None, &["checkpointp", &pod.sandbox.id, "--name", "loaded"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    gone(&kubelet, &runtime, "model").await;

    let (mut cold, mut warm) = (vec![first], Vec::new());
    for round in 0..rounds {
        let name = format!("warm-{round}");
        warm.push(to_ready(&kubelet, &name, &manifest(&name, &tb.image, Some("loaded"))).await);
        gone(&kubelet, &runtime, &name).await;
        let name = format!("cold-{round}");
        cold.push(to_ready(&kubelet, &name, &manifest(&name, &tb.image, None)).await);
        gone(&kubelet, &runtime, &name).await;
    }
    cold.truncate(rounds);
    let (c, w) = (support::median(cold.clone()), support::median(warm.clone()));
    println!("### Warm start through the kubelet (manifest placed → Ready), {rounds} rounds each\n");
    println!(
        "checkpoint: {} bytes, frozen {} ms\n",
        report["bytes"], report["freeze_ms"]
    );
    println!("| start | median s | rounds s |");
    println!("|---|---|---|");
    let list = |v: &[f64]| v.iter().map(|s| format!("{s:.2}")).collect::<Vec<_>>().join(", ");
    println!("| cold (20 s of loading) | {c:.2} | {} |", list(&cold));
    println!("| warm (podckpt.io/restore-from) | {w:.2} | {} |", list(&warm));
    println!("\nwarm / cold: {:.3}\n", w / c);
}

/// One ordinary pod's RunPodSandbox, CreateContainer and StartContainer
/// through `shim`, in seconds each.
async fn ordinary_pod(shim: &Shim, tb: &support::Testbed) -> (f64, f64, f64) {
    let mut client = shim.client().await;
    let started = Instant::now();
    let pod = Pod::run(&mut client, &shim.socket, "plain").await;
    let run = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let cid = pod
        .create_container(&mut client, support::container_config("c", &tb.image, "sleep 3600"))
        .await;
    let create = started.elapsed().as_secs_f64();
    let started = Instant::now();
    client
        .start_container(cri::StartContainerRequest { container_id: cid })
        .await
        .expect("StartContainer");
    let start = started.elapsed().as_secs_f64();
    (run, create, start)
}

async fn check_cost(tb: &support::Testbed, rounds: usize) {
    let root = tempfile::tempdir().unwrap();
    let on = Shim::start_with(
        tb,
        &format!(
            "restore_from_annotation = true\ncheckpoint_root = \"{}\"\n",
            root.path().display()
        ),
        5,
    );
    let off = Shim::start(tb);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    // One of each first, unmeasured: the runtime's first pod is slower.
    ordinary_pod(&on, tb).await;
    ordinary_pod(&off, tb).await;
    for _ in 0..rounds {
        with.push(ordinary_pod(&on, tb).await);
        without.push(ordinary_pod(&off, tb).await);
    }
    let m = |v: &[(f64, f64, f64)], f: fn(&(f64, f64, f64)) -> f64| support::median(v.iter().map(f).collect());
    println!(
        "### An ordinary pod through podckptd, restore by annotation on against off, {rounds} pods each, alternating\n"
    );
    println!("| call | on: median ms | off: median ms | on / off |");
    println!("|---|---|---|---|");
    for (call, f) in [
        (
            "RunPodSandbox",
            (|t: &(f64, f64, f64)| t.0) as fn(&(f64, f64, f64)) -> f64,
        ),
        ("CreateContainer", |t| t.1),
        ("StartContainer (not read)", |t| t.2),
    ] {
        let (a, b) = (m(&with, f), m(&without, f));
        println!("| {call} | {:.1} | {:.1} | {:.2} |", a * 1e3, b * 1e3, a / b);
    }
    println!();
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "--bench") {
        return;
    }
    let tb = support::bench_testbed();
    let rounds = args
        .iter()
        .position(|a| a == "--rounds")
        .and_then(|i| args.get(i + 1))
        .map(|n| n.parse().expect("a number of rounds"))
        .unwrap_or(5);
    let only = args.iter().position(|a| a == "--only").and_then(|i| args.get(i + 1));
    println!("## Restore by annotation ({})\n", tb.runtime_name().await);
    if only.is_none_or(|part| part == "warm") {
        warm_start(&tb, rounds).await;
    }
    if only.is_none_or(|part| part == "cost") {
        check_cost(&tb, rounds * 4).await;
    }
}
