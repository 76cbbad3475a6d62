#!/usr/bin/env bash
# The main job on a fresh node: set up the test bed, build podckpt, start
# podckptd in front of the private containerd, run a counter pod through it,
# checkpoint the pod, delete it, restore it into a new pod and watch the
# counter go on from where it was.
#
#   contrib/demo.sh            the pod runs in runc under containerd, CRIU captures it
#   contrib/demo.sh --crio     the same under the test bed's CRI-O
#   contrib/demo.sh --gvisor   the pod runs in gVisor under containerd, runsc captures it
set -euo pipefail
cd "$(dirname "$0")/.."
handler="" restore_handler=podckpt config=/dev/null runtime=containerd
case "${1:-}" in
    --gvisor) handler=gvisor restore_handler=gvisor ;;
    --crio) runtime=crio ;;
    "") ;;
    *) echo "usage: $0 [--crio | --gvisor]" >&2; exit 2 ;;
esac
bash contrib/testbed.sh up
cargo build --release --locked --bin podckptd --bin podckpt --bin podckpt-runc --example counter_pod
eval "$(bash contrib/testbed.sh env)"
# containerd's "podckpt" runtime handler runs this podckpt-runc.
install -D -m 0755 target/release/podckpt-runc "$PODCKPT_TESTBED_INTERPOSER"
# Its "gvisor" handler runs the same binary as podckpt-runsc, in front of runsc.
ln -sf podckpt-runc "$(dirname "$PODCKPT_TESTBED_INTERPOSER")/podckpt-runsc"

work=$(mktemp -d /run/podckpt-demo.XXXXXX)
sock="$work/podckpt.sock"
if [ -n "$handler" ]; then
    config="$work/config.toml"
    printf '[handlers.gvisor]\nbackend = "runsc"\nruntime = "runsc"\nroot = "/run/podckpt-testbed/runsc/k8s.io"\nrestore = true\n' >"$config"
fi
endpoint=$PODCKPT_TEST_CONTAINERD
# CRI-O's "podckpt" handler runs the same podckpt-runc; podckptd reads each
# handler's runc root from the runtime it fronts.
[ "$runtime" = crio ] && endpoint=$PODCKPT_TEST_CRIO
./target/release/podckptd --config "$config" --listen "$sock" --state-dir "$work/state" \
    --runtime-endpoint "unix://$endpoint" --log-level warn &
shim=$!
pods=()
cleanup() {
    for p in "${pods[@]}"; do ./target/release/examples/counter_pod rmp "$sock" "$p" 2>/dev/null || true; done
    kill -TERM "$shim" 2>/dev/null && wait "$shim" || true
    # The demo's pods live in their own namespace, and so do their log dirs.
    rm -rf "$work" /var/log/pods/podckpt-demo_*
}
trap cleanup EXIT
for _ in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.05; done
podckpt() { ./target/release/podckpt --runtime-endpoint "unix://$sock" "$@"; }
counter() { ./target/release/examples/counter_pod "$@"; }

echo "== a counter pod, through podckptd in front of $runtime${handler:+ (runtime handler $handler)}"
read -r pod cid < <(counter run "$sock" "$PODCKPT_TEST_BUSYBOX_IMAGE" "$handler")
pods+=("$pod")
sleep 4
echo "counter = $(counter count "$sock" "$cid")"

echo "== podckpt checkpointp"
podckpt checkpointp "$pod" -o "$work/checkpoint"
echo "counter = $(counter count "$sock" "$cid")  (the pod kept running)"
podckpt inspectcp "$work/checkpoint"

echo "== the pod is deleted"
before=$(counter count "$sock" "$cid")
counter rmp "$sock" "$pod"
pods=()

echo "== podckpt restorep --start"
restored=$(podckpt --output json restorep "$work/checkpoint" --name counter-restored \
    --runtime-handler "$restore_handler" --start)
new_pod=$(echo "$restored" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pod_sandbox_id"])')
new_cid=$(echo "$restored" | python3 -c 'import json,sys; print(json.load(sys.stdin)["containers"][0]["container_id"])')
pods+=("$new_pod")
echo "restored pod $new_pod"
for _ in 1 2 3; do
    echo "counter = $(counter count "$sock" "$new_cid")  (was $before when deleted)"
    sleep 1
done
