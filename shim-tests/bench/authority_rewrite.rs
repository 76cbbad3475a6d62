//! What accepting grpc C-core's `:authority` costs per call.
//!
//!   cargo bench --bench authority_rewrite
//!
//! A grpc C-core client (Python `grpcio`) sends the socket path as
//! `:authority`, and podckptd then decodes every header block of that
//! connection and rewrites the field (see `src/proxy/authority.rs`). This
//! times that work alone, on the blocks such a client sends over one
//! connection: the first call's, all literals, and then the steady state,
//! where HPACK's dynamic table turns most fields into one-byte references.
//! A client that sends a host name (grpc-go, the kubelet, tonic) pays none
//! of this after its first call. Prints the median of 5 runs.

use std::time::Instant;

use httlib_hpack::Encoder;
use podckpt::proxy::authority::{AuthorityRewriter, Rewrite};

const CALLS: usize = 20_000;
const RUNS: usize = 5;

/// The header blocks of `calls` Version calls as grpcio 1.x encodes them.
fn connection(calls: usize) -> Vec<Vec<u8>> {
    let mut encoder = Encoder::default();
    (0..calls)
        .map(|_| {
            let mut block = Vec::new();
            for (name, value) in [
                (&b":scheme"[..], &b"http"[..]),
                (b":method", b"POST"),
                (b":authority", b"run%2Fpodckpt%2Fpodckpt.sock"),
                (b":path", b"/runtime.v1.RuntimeService/Version"),
                (b"te", b"trailers"),
                (b"content-type", b"application/grpc"),
                (b"user-agent", b"grpc-python/1.76.0 grpc-c/51.0.0 (linux; chttp2)"),
                (b"grpc-accept-encoding", b"identity, deflate, gzip"),
                (b"grpc-timeout", b"4999932u"),
            ] {
                // Best representation, indexed, Huffman-coded values: what C-core does.
                encoder
                    .encode((name.to_vec(), value.to_vec(), 0x2 | 0x4 | 0x10), &mut block)
                    .unwrap();
            }
            block
        })
        .collect()
}

fn main() {
    let blocks = connection(CALLS);
    let mut first = Vec::new();
    let mut steady = Vec::new();
    for _ in 0..RUNS {
        let mut rewriter = AuthorityRewriter::default();
        let started = Instant::now();
        let changed = rewriter.rewrite(&blocks[0]).unwrap();
        first.push(started.elapsed().as_nanos() as f64);
        assert!(matches!(changed, Rewrite::Changed(_)));
        let started = Instant::now();
        for block in &blocks[1..] {
            std::hint::black_box(rewriter.rewrite(block).unwrap());
        }
        steady.push(started.elapsed().as_nanos() as f64 / (CALLS - 1) as f64);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("| header block | bytes | rewrite time (median of {RUNS}) |");
    println!("|---|---|---|");
    println!("| first call | {} | {:.0} ns |", blocks[0].len(), median(&mut first));
    println!(
        "| each later call (mean over {}) | {} | {:.0} ns |",
        CALLS - 1,
        blocks[1].len(),
        median(&mut steady)
    );
}
