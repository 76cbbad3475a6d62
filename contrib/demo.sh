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
#   contrib/demo.sh --kubernetes
#                              the same through an API server (1.36.2) and kubectl: deploy/kubernetes
#                              applied, a PodCheckpoint taken by the node agent, the pod restored by
#                              annotation by a user allowed to, refused to one who is not
set -euo pipefail
cd "$(dirname "$0")/.."
handler="" restore_handler=podckpt config=/dev/null runtime=containerd move="" kubelet="" kubernetes=""
case "${1:-}" in
    --gvisor) handler=gvisor restore_handler=gvisor ;;
    --crio) runtime=crio ;;
    --move) move=1 ;;
    --kubelet) kubelet=1 ;;
    --kubernetes) kubelet=1 kubernetes=1 ;;
    "") ;;
    *) echo "usage: $0 [--crio | --gvisor | --move | --kubelet | --kubernetes]" >&2; exit 2 ;;
esac
# The packages first: building podckpt needs protoc.
bash contrib/testbed.sh install
cargo build --release --locked --bin podckptd --bin podckpt --bin podckpt-runc --example counter_pod \
    ${kubernetes:+--bin podckpt-agent}
eval "$(bash contrib/testbed.sh env)"
# The runtimes' "podckpt" handlers run this podckpt-runc (and their "gvisor"
# handler the same binary as podckpt-runsc): in place before they start,
# which `testbed.sh start` insists on.
install -D -m 0755 target/release/podckpt-runc "$PODCKPT_TESTBED_INTERPOSER.new"
mv "$PODCKPT_TESTBED_INTERPOSER.new" "$PODCKPT_TESTBED_INTERPOSER"
bash contrib/testbed.sh up

work=$(mktemp -d /run/podckpt-demo.XXXXXX)
sock="$work/podckpt.sock"
# The test bed's overlay of deploy/kubernetes has the agent find podckptd here.
[ -n "$kubernetes" ] && sock=/run/podckpt-testbed/podckpt.sock
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
    if [ -n "$kubernetes" ]; then
        bash contrib/testbed.sh cluster-stop || true
        # What the registered kubelet ran: the agent's pod and the counters.
        for p in $(./target/release/examples/counter_pod kubelet-pods "$sock" 2>/dev/null); do pods+=("$p"); done
    fi
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
# Three readings of a restored counter, beside the last one of the old pod.
count_on() {
    for _ in 1 2 3; do
        echo "counter = $(counter count "$sock" "$1")  (was $before when $2)"
        sleep 1
    done
}

if [ -n "$kubernetes" ]; then
    # The control plane, the kubelet registered through podckptd, and what a
    # user applies: deploy/kubernetes, through the test bed's overlay
    # (contrib/testbed/kubernetes: the API server's address, podckptd's
    # socket, a disk cap), with the agent's image from its release binary.
    bash contrib/testbed.sh cluster-start
    bash contrib/testbed.sh kubelet-start "$sock" cluster
    bash contrib/testbed.sh agent-image target/release/podckpt-agent
    kubectl() { "$PODCKPT_TEST_KUBECTL" --kubeconfig "$PODCKPT_TEST_KUBECONFIG" "$@"; }
    typed() { echo "\$ kubectl $*"; kubectl "$@"; }
    echo "== install: the CRD, the node agent (DaemonSet), RBAC, the admission policy"
    typed apply -k contrib/testbed/kubernetes
    kubectl wait --for=condition=Established crd/podcheckpoints.podckpt.io --timeout=60s >/dev/null
    # No controller-manager here: the test bed makes the DaemonSet's pod.
    bash contrib/testbed.sh cluster-daemonsets
    typed -n podckpt-system wait --for=condition=Ready pod -l app.kubernetes.io/name=podckpt-agent --timeout=120s
    bash contrib/testbed.sh cluster-namespace team-a
    echo "== alice may checkpoint and restore in team-a; bob may not restore"
    kubectl -n team-a create role pods --verb=create,get,list,watch,delete --resource=pods,pods/log,pods/exec >/dev/null
    typed -n team-a create rolebinding pods --role=pods --user=alice --user=bob
    typed -n team-a create rolebinding checkpointers --clusterrole=podckpt-checkpointer --user=alice
    typed -n team-a create rolebinding restorers --clusterrole=podckpt-restorer --user=alice
    sleep 2
    counter_pod() {
        cat <<EOF
apiVersion: v1
kind: Pod
metadata:
  name: $1
  namespace: team-a${2:+
  annotations:
    podckpt.io/restore-from: $2}
spec:
  nodeName: podckpt-node
  automountServiceAccountToken: false
  enableServiceLinks: false
  terminationGracePeriodSeconds: 1
  containers:
  - name: counter
    image: $PODCKPT_TEST_BUSYBOX_IMAGE
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "i=0; while :; do i=\$((i+1)); echo count \$i; sleep 1; done"]
EOF
    }
    echo "== a counter pod"
    counter_pod counter | tee "$work/counter.yaml"
    typed --as=alice apply -f "$work/counter.yaml"
    kubectl -n team-a wait --for=condition=Ready pod/counter --timeout=120s >/dev/null
    sleep 5
    echo "== a PodCheckpoint of it"
    cat <<EOF | tee "$work/warm.yaml"
apiVersion: podckpt.io/v1alpha1
kind: PodCheckpoint
metadata:
  name: warm
  namespace: team-a
spec:
  sourcePod:
    name: counter
EOF
    typed --as=alice apply -f "$work/warm.yaml"
    typed -n team-a wait --for=condition=Ready podcheckpoint/warm --timeout=180s
    typed -n team-a get podcheckpoints
    typed -n team-a get podcheckpoint warm -o jsonpath='{.status}'; echo
    echo "== the pod goes; a new one names the checkpoint"
    typed -n team-a logs counter --tail=1
    typed -n team-a delete pod counter
    counter_pod restored warm >"$work/restored.yaml"
    grep -A1 annotations "$work/restored.yaml"
    typed --as=bob apply -f "$work/restored.yaml" || true
    typed --as=alice apply -f "$work/restored.yaml"
    kubectl -n team-a wait --for=condition=Ready pod/restored --timeout=120s >/dev/null
    sleep 3
    typed -n team-a logs restored --tail=4
    typed -n team-a get pod restored
    echo "== the PodCheckpoint goes, and its checkpoint on the node with it"
    typed -n team-a delete podcheckpoint warm
    podckpt checkpoints
    typed -n team-a delete pod restored
    exit 0
fi

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
    count_on "$new_cid" "the old pod went"
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
count_on "$new_cid" "deleted"
