#!/usr/bin/env bash
# The main job on a fresh node: set up the test bed, build podckpt, start
# podckptd in front of the private containerd, run a counter pod through it,
# checkpoint the pod, delete it, restore it into a new pod and watch the
# counter go on from where it was.
#
#   contrib/demo.sh            the pod runs in runc under containerd, CRIU captures it
#   contrib/demo.sh --crio     the same under the test bed's CRI-O
#   contrib/demo.sh --gvisor   the pod runs in gVisor under containerd, runsc captures it
#   contrib/demo.sh --move     the pod moves to the test bed's node B (its own containerd and
#                              podckptd): exported encrypted to node B's key, imported, restored
#                              there, while node A's pod keeps running
#   contrib/demo.sh --kubelet  a real kubelet (1.36.2, standalone) runs the counter pod from its
#                              manifest; it is checkpointed by name, and its manifest replaced by
#                              one annotated podckpt.io/restore-from: the kubelet's own pod comes
#                              back restored and counts on
set -euo pipefail
cd "$(dirname "$0")/.."
handler="" restore_handler=podckpt config=/dev/null runtime=containerd move="" kubelet=""
case "${1:-}" in
    --gvisor) handler=gvisor restore_handler=gvisor ;;
    --crio) runtime=crio ;;
    --move) move=1 ;;
    --kubelet) kubelet=1 ;;
    "") ;;
    *) echo "usage: $0 [--crio | --gvisor | --move | --kubelet]" >&2; exit 2 ;;
esac
# The packages first: building podckpt needs protoc.
bash contrib/testbed.sh install
cargo build --release --locked --bin podckptd --bin podckpt --bin podckpt-runc --example counter_pod
eval "$(bash contrib/testbed.sh env)"
# The runtimes' "podckpt" handlers run this podckpt-runc (and their "gvisor"
# handler the same binary as podckpt-runsc): in place before they start,
# which `testbed.sh start` insists on.
install -D -m 0755 target/release/podckpt-runc "$PODCKPT_TESTBED_INTERPOSER.new"
mv "$PODCKPT_TESTBED_INTERPOSER.new" "$PODCKPT_TESTBED_INTERPOSER"
bash contrib/testbed.sh up

work=$(mktemp -d /run/podckpt-demo.XXXXXX)
sock="$work/podckpt.sock"
if [ -n "$handler" ]; then
    config="$work/config.toml"
    printf '[handlers.gvisor]\nbackend = "runsc"\nruntime = "runsc"\nroot = "/run/podckpt-testbed/runsc/k8s.io"\nrestore = true\n' >"$config"
fi
if [ -n "$kubelet" ]; then
    # The node restores pods by annotation, from checkpoints kept by name.
    config="$work/config.toml"
    printf 'restore_from_annotation = true\ncheckpoint_root = "%s"\n' "$work/checkpoints" >"$config"
fi
endpoint=$PODCKPT_TEST_CONTAINERD
# CRI-O's "podckpt" handler runs the same podckpt-runc; podckptd reads each
# handler's runc root from the runtime it fronts.
[ "$runtime" = crio ] && endpoint=$PODCKPT_TEST_CRIO
./target/release/podckptd --config "$config" --listen "$sock" --state-dir "$work/state" \
    --runtime-endpoint "unix://$endpoint" --log-level warn &
shim=$!
pods=() pods_b=() shim_b=""
sock_b="$work/node-b.sock"
cleanup() {
    # The kubelet stops its pods when it stops; what it made is removed next.
    if [ -n "$kubelet" ]; then bash contrib/testbed.sh kubelet-stop || true; fi
    for p in "${pods[@]}"; do ./target/release/examples/counter_pod rmp "$sock" "$p" 2>/dev/null || true; done
    for p in "${pods_b[@]}"; do ./target/release/examples/counter_pod rmp "$sock_b" "$p" 2>/dev/null || true; done
    kill -TERM "$shim" 2>/dev/null && wait "$shim" || true
    if [ -n "$shim_b" ]; then kill -TERM "$shim_b" 2>/dev/null && wait "$shim_b" || true; fi
    # The demo's pods live in their own namespace, and so do their log dirs.
    rm -rf "$work" /var/log/pods/podckpt-demo_*
    # The test bed stays up for the next demo or test run, which reuse it.
    echo "== the demo's pods and podckptd are removed; the test bed (containerd, CRI-O, node B) is still running."
    echo "   Stop it with: contrib/testbed.sh stop"
}
trap cleanup EXIT
if [ -n "$move" ]; then
    # Node B: the test bed's second containerd, with a podckptd of its own.
    ./target/release/podckptd --config /dev/null --listen "$sock_b" --state-dir "$work/state-b" \
        --runtime-endpoint "unix://$PODCKPT_TEST_CONTAINERD_B" --log-level warn &
    shim_b=$!
fi
for _ in $(seq 1 100); do [ -S "$sock" ] && { [ -z "$move" ] || [ -S "$sock_b" ]; } && break; sleep 0.05; done
podckpt() { ./target/release/podckpt --runtime-endpoint "unix://$sock" "$@"; }
podckpt_b() { ./target/release/podckpt --runtime-endpoint "unix://$sock_b" "$@"; }
counter() { ./target/release/examples/counter_pod "$@"; }

if [ -n "$kubelet" ]; then
    manifests="$PODCKPT_TEST_KUBELET_DIR/manifests"
    bash contrib/testbed.sh kubelet-start "$sock"
    echo "== a kubelet (1.36.2, standalone) runs the counter pod from its manifest, through podckptd"
    # The counter's manifest; with a name, annotated to restore from that checkpoint.
    manifest() {
        cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: counter
  namespace: default${1:+
  annotations:
    podckpt.io/restore-from: $1}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: counter
    image: $PODCKPT_TEST_BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "i=0; while :; do i=\$((i+1)); echo \$i > /tmp/count; echo count \$i; sleep 1; done"]
    livenessProbe:
      exec:
        command: ["cat", "/tmp/count"]
      periodSeconds: 2
EOF
    }
    # Whole or not at all: the kubelet passes over hidden files.
    place() { manifest "$@" >"$manifests/.counter.yaml" && mv "$manifests/.counter.yaml" "$manifests/counter.yaml"; }
    place
    cat "$manifests/counter.yaml"
    read -r pod cid _ < <(counter find "$sock" counter-podckpt-node)
    pods+=("$pod")
    sleep 5
    echo "counter = $(counter count "$sock" "$cid")"
    echo "== podckpt checkpointp POD --name warm: kept by name, in the pod's namespace"
    podckpt checkpointp "$pod" --name warm
    podckpt checkpoints
    echo "== the manifest is replaced by one that names the checkpoint"
    before=$(counter count "$sock" "$cid")
    rm "$manifests/counter.yaml"
    while [ "$(counter find "$sock" counter-podckpt-node 2>/dev/null | cut -d' ' -f1)" = "$pod" ]; do sleep 0.5; done
    place warm
    grep -A1 annotations "$manifests/counter.yaml"
    read -r new_pod new_cid attempt < <(counter find "$sock" counter-podckpt-node)
    pods+=("$new_pod")
    echo "the kubelet's new pod $new_pod, container $new_cid (attempt $attempt)"
    for _ in 1 2 3; do
        echo "counter = $(counter count "$sock" "$new_cid")  (was $before when the old pod went)"
        sleep 1
    done
    sleep 10
    read -r still_pod still_cid attempt < <(counter find "$sock" counter-podckpt-node)
    echo "10 s later the kubelet keeps it: pod $still_pod, container $still_cid, attempt $attempt"
    echo "counter = $(counter count "$sock" "$still_cid")"
    exit 0
fi

echo "== a counter pod, through podckptd in front of $runtime${handler:+ (runtime handler $handler)}"
read -r pod cid < <(counter run "$sock" "$PODCKPT_TEST_BUSYBOX_IMAGE" "$handler")
pods+=("$pod")
sleep 4
echo "counter = $(counter count "$sock" "$cid")"

echo "== podckpt preflight: can it be checkpointed? (nothing is paused)"
podckpt preflight "$pod" --output-dir "$work/checkpoint"

echo "== podckpt checkpointp"
podckpt checkpointp "$pod" -o "$work/checkpoint"
echo "counter = $(counter count "$sock" "$cid")  (the pod kept running)"
podckpt inspectcp "$work/checkpoint"

if [ -n "$move" ]; then
    echo "== podckpt keygen on node B; podckpt export | podckpt import, encrypted to its key"
    recipient=$(podckpt_b keygen -o "$work/node-b.key")
    podckpt export "$work/checkpoint" --recipient "$recipient" |
        podckpt_b import - "$work/on-node-b" --identity "$work/node-b.key" --state-dir "$work/state-b"
    echo "== podckpt restorep --start on node B"
    restored=$(podckpt_b --output json restorep "$work/on-node-b" --name counter-moved --start)
    moved_pod=$(echo "$restored" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pod_sandbox_id"])')
    moved_cid=$(echo "$restored" | python3 -c 'import json,sys; print(json.load(sys.stdin)["containers"][0]["container_id"])')
    pods_b+=("$moved_pod")
    echo "restored pod $moved_pod on node B"
    for _ in 1 2 3; do
        echo "node B counter = $(counter count "$sock_b" "$moved_cid")  node A counter = $(counter count "$sock" "$cid")"
        sleep 1
    done
    exit 0
fi

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
