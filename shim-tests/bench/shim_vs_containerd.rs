//! The shim against containerd called directly, in the same run, on the test bed.
//!
//!   cargo bench --bench shim_vs_containerd [-- [--crio] [--metrics]]
//!
//! With `--crio`, the shim in front of the test bed's CRI-O against CRI-O.
//! With `--metrics`, podckptd keeps its Prometheus metrics.
//!
//! Latency: p50 and p99 of Version and of ListContainers with 50 containers,
//! measured in alternating rounds so that drift on a noisy machine hits both
//! sides alike. Throughput: calls per second at 1 and 32 concurrent callers.
//! Memory: podckptd's resident set while idle. Prints a Markdown report.

#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use podckpt::api::cri;
use support::{Pod, Runtime, Shim};

const CONTAINERS: usize = 50;
const ROUNDS: usize = 10;
const CALLS_PER_ROUND: usize = 200;
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(3);

#[derive(Clone, Copy)]
enum Call {
    Version,
    ListContainers,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Version => "Version",
            Call::ListContainers => "ListContainers (50)",
        }
    }

    async fn once(self, client: &mut Runtime) {
        match self {
            Call::Version => {
                client.version(cri::VersionRequest::default()).await.expect("Version");
            }
            Call::ListContainers => {
                let n = client
                    .list_containers(cri::ListContainersRequest { filter: None })
                    .await
                    .expect("ListContainers")
                    .into_inner()
                    .containers
                    .len();
                assert!(n >= CONTAINERS, "only {n} containers listed");
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

async fn latencies(direct: &Runtime, shim: &Runtime, call: Call) -> [(Duration, Duration); 2] {
    let mut samples = [Vec::new(), Vec::new()];
    for _ in 0..ROUNDS {
        for (side, client) in [direct, shim].into_iter().enumerate() {
            let mut client = client.clone();
            call.once(&mut client).await; // warm the connection for this round
            for _ in 0..CALLS_PER_ROUND {
                let start = Instant::now();
                call.once(&mut client).await;
                samples[side].push(start.elapsed());
            }
        }
    }
    samples.map(|mut s| {
        s.sort();
        (percentile(&s, 0.50), percentile(&s, 0.99))
    })
}

async fn throughput(client: &Runtime, call: Call, callers: usize) -> f64 {
    let until = Instant::now() + THROUGHPUT_WINDOW;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    call.once(&mut client).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("caller");
    }
    total as f64 / THROUGHPUT_WINDOW.as_secs_f64()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

#[tokio::main]
async fn main() {
    // `cargo test` runs bench targets without --bench; only `cargo bench` measures.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let tb = support::bench_testbed();
    // With `--metrics`, podckptd counts every call for Prometheus (served
    // on a socket nobody scrapes here): what the metrics cost.
    let metrics = tempfile::tempdir().unwrap();
    let shim = if std::env::args().any(|a| a == "--metrics") {
        let toml = format!(
            "metrics_listen = \"unix://{}/metrics.sock\"\n",
            metrics.path().display()
        );
        Shim::start_with(&tb, &toml, 5)
    } else {
        Shim::start(&tb)
    };
    let idle_rss_start = rss_kib(shim.pid());
    let direct = tb.direct().await;
    let via_shim = shim.client().await;

    // 50 running containers in 5 pods, created through containerd directly.
    let mut setup = tb.direct().await;
    let mut pods = Vec::new();
    for p in 0..5 {
        let pod = Pod::run(&mut setup, &tb.socket, &format!("bench{p}")).await;
        for c in 0..CONTAINERS / 5 {
            pod.start_container(&mut setup, &tb.image, &format!("c{c}"), "exec sleep 3600")
                .await;
        }
        pods.push(pod);
    }

    println!("| call | direct p50 µs | shim p50 µs | p50 ratio | direct p99 µs | shim p99 µs | p99 ratio |");
    println!("|---|---|---|---|---|---|---|");
    for call in [Call::Version, Call::ListContainers] {
        let [(d50, d99), (s50, s99)] = latencies(&direct, &via_shim, call).await;
        println!(
            "| {} | {:.0} | {:.0} | {:.3} | {:.0} | {:.0} | {:.3} |",
            call.name(),
            micros(d50),
            micros(s50),
            micros(s50) / micros(d50),
            micros(d99),
            micros(s99),
            micros(s99) / micros(d99)
        );
    }
    println!();
    println!("| call | callers | direct calls/s | shim calls/s | ratio |");
    println!("|---|---|---|---|---|");
    for call in [Call::Version, Call::ListContainers] {
        for callers in [1, 32] {
            let d = throughput(&direct, call, callers).await;
            let s = throughput(&via_shim, call, callers).await;
            println!("| {} | {callers} | {d:.0} | {s:.0} | {:.3} |", call.name(), s / d);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss_after = rss_kib(shim.pid());
    println!();
    println!(
        "podckptd resident memory while idle: {:.1} MiB at start, {:.1} MiB after the load",
        idle_rss_start as f64 / 1024.0,
        idle_rss_after as f64 / 1024.0
    );
    drop(pods);
}
