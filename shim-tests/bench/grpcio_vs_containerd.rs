//! The shim against containerd called directly, as a grpc C-core client
//! (Python `grpcio`, default channel options) sees it, in the same run.
//!
//!   cargo bench --bench grpcio_vs_containerd
//!
//! Such a client sends the socket path as `:authority`, so podckptd decodes
//! and rewrites every header block of its connection (see
//! `src/proxy/authority.rs`); a grpc-go or tonic client takes the plain path
//! measured by `shim_vs_containerd`. Needs the test bed and its interop
//! Python (`contrib/testbed.sh up`). Prints a Markdown table.

#[path = "../support/mod.rs"]
mod support;

use std::process::Command;

const ROUNDS: &str = "10";
const CALLS_PER_ROUND: &str = "200";

fn main() {
    let Some(tb) = support::testbed() else { return };
    let python = std::env::var("PODCKPT_INTEROP_PYTHON")
        .unwrap_or_else(|_| "/var/lib/podckpt-testbed/interop/venv/bin/python".into());
    let shim = support::Shim::start(&tb);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/shim-tests/bench/grpcio_latency.py");
    let out = Command::new(&python)
        .arg(script)
        .arg(&tb.socket)
        .arg(&shim.socket)
        .args([ROUNDS, CALLS_PER_ROUND])
        .output()
        .expect("running the grpcio benchmark");
    assert!(
        out.status.success(),
        "grpcio benchmark failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("the benchmark's JSON");
    let field = |side: &str, p: &str| report[side][p].as_f64().expect("a latency");
    println!(
        "| grpcio Version | direct µs | shim, path rewritten µs | shim, authority localhost µs | rewritten / direct | rewritten / localhost |"
    );
    println!("|---|---|---|---|---|---|");
    for p in ["p50_us", "p99_us"] {
        let (direct, shim, plain) = (field("direct", p), field("shim", p), field("shim_localhost", p));
        println!(
            "| {} | {direct:.0} | {shim:.0} | {plain:.0} | {:.3} | {:.3} |",
            &p[..3],
            shim / direct,
            shim / plain
        );
    }
}
