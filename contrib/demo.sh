#!/usr/bin/env bash
# The main job on a fresh node: set up the test bed, build podckpt, start
# podckptd in front of the private containerd, and run a counter pod through it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash contrib/testbed.sh up
cargo build --release --locked --bin podckptd --example pod_through_shim

eval "$(bash contrib/testbed.sh env)"
sock_dir=$(mktemp -d /run/podckpt-demo.XXXXXX)
sock="$sock_dir/podckpt.sock"
./target/release/podckptd --config /dev/null --listen "$sock" \
    --runtime-endpoint "unix://$PODCKPT_TEST_CONTAINERD" --log-level warn &
shim=$!
cleanup() { kill -TERM "$shim" 2>/dev/null && wait "$shim" || true; rm -rf "$sock_dir"; }
trap cleanup EXIT
for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.05; done
echo "podckptd (pid $shim) on $sock -> unix://$PODCKPT_TEST_CONTAINERD"
./target/release/examples/pod_through_shim "$sock" "$PODCKPT_TEST_BUSYBOX_IMAGE"
