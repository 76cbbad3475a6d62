# The test bed's control plane, sourced by contrib/testbed.sh: etcd (Debian
# trixie's) and kube-apiserver 1.36.2 (../shared/bin) on this machine, with
# certificates of its own, for the test bed's kubelet registered as node
# podckpt-node (kubelet-start SOCKET cluster), driven with kubectl 1.36
# (Debian forky's, unpacked into the test bed, beside any kubectl of the
# machine). There is no scheduler and no controller-manager: pods name
# their node (spec.nodeName), and the test bed does the little of the
# controller-manager's work a test needs (cluster-namespace, cluster-
# daemonsets). See ../shared/notes/runtime-facts.md, "API server".

CL_DIR="$TB_DIR_A/cluster"
CL_PKI="$CL_DIR/pki"
# The node's address: on an interface of its own, not loopback (the
# kubelet refuses a loopback node IP, and the API server dials the node's
# InternalIP), reachable from pods through their bridge's gateway.
CL_IFACE=podckpt-api
CL_NODE_IP=10.244.76.1
CL_NODE=podckpt-node
CL_SERVER="https://$CL_NODE_IP:6443"
CL_ETCD="http://127.0.0.1:2479"
CL_SERVICES=10.96.0.0/24
CL_ETCD_PIDFILE="$TB_RUN_A/etcd.pid"
CL_API_PIDFILE="$TB_RUN_A/kube-apiserver.pid"
KUBECTL_VERSION=1.36.4+ds-1
KUBECTL="$TB_DIR_A/kubectl/usr/bin/kubectl"
ADMIN_KUBECONFIG="$CL_DIR/admin.kubeconfig"
NODE_KUBECONFIG="$CL_DIR/node.kubeconfig"

# kubectl from forky, unpacked: the machine's own kubectl (if any) is left
# as it is, and nothing else comes from forky.
install_kubectl() {
    if [ -x "$KUBECTL" ] && "$KUBECTL" version --client 2>/dev/null | grep -q 'v1\.36\.'; then
        return
    fi
    local apt="$TB_DIR_A/apt-forky"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$TB_DIR_A/kubectl"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian forky main" \
        >"$apt/sources.list"
    local opts=(-o "Dir::Etc::sourcelist=$apt/sources.list" -o Dir::Etc::sourceparts=/dev/null
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache")
    apt-get "${opts[@]}" update -qq
    (cd "$apt" && apt-get "${opts[@]}" download -qq "kubectl=$KUBECTL_VERSION")
    dpkg -x "$apt"/kubectl_*.deb "$TB_DIR_A/kubectl"
    log "installed $("$KUBECTL" version --client | head -1) into $TB_DIR_A/kubectl"
}

# A key and a certificate signed by the test bed's CA.
cluster_cert() {
    local name=$1 subject=$2 usage=$3 sans=${4:-}
    openssl genrsa -out "$CL_PKI/$name.key" 2048 2>/dev/null
    openssl req -new -key "$CL_PKI/$name.key" -subj "$subject" -out "$CL_PKI/$name.csr"
    {
        echo "basicConstraints=CA:FALSE"
        echo "keyUsage=digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$usage"
        if [ -n "$sans" ]; then echo "subjectAltName=$sans"; fi
    } >"$CL_PKI/$name.ext"
    openssl x509 -req -in "$CL_PKI/$name.csr" -CA "$CL_PKI/ca.crt" -CAkey "$CL_PKI/ca.key" -CAcreateserial \
        -days 3650 -out "$CL_PKI/$name.crt" -extfile "$CL_PKI/$name.ext" 2>/dev/null
}

cluster_pki() {
    [ -f "$CL_PKI/done" ] && return
    rm -rf "$CL_PKI"
    mkdir -p "$CL_PKI"
    chmod 700 "$CL_PKI"
    openssl genrsa -out "$CL_PKI/ca.key" 2048 2>/dev/null
    openssl req -x509 -new -nodes -key "$CL_PKI/ca.key" -subj "/CN=podckpt-testbed-ca" -days 3650 -out "$CL_PKI/ca.crt"
    cluster_cert apiserver "/CN=kube-apiserver" serverAuth \
        "IP:127.0.0.1,IP:$CL_NODE_IP,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc"
    cluster_cert admin "/O=system:masters/CN=podckpt-admin" clientAuth
    cluster_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
    cluster_cert node "/O=system:nodes/CN=system:node:$CL_NODE" clientAuth
    cluster_cert kubelet "/CN=$CL_NODE" serverAuth "IP:$CL_NODE_IP,DNS:$CL_NODE"
    openssl genrsa -out "$CL_PKI/sa.key" 2048 2>/dev/null
    openssl rsa -in "$CL_PKI/sa.key" -pubout -out "$CL_PKI/sa.pub" 2>/dev/null
    touch "$CL_PKI/done"
}

cluster_kubeconfig() {
    local file=$1 user=$2
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: podckpt-testbed
  cluster:
    server: $CL_SERVER
    certificate-authority: $CL_PKI/ca.crt
users:
- name: $user
  user:
    client-certificate: $CL_PKI/$user.crt
    client-key: $CL_PKI/$user.key
contexts:
- name: podckpt-testbed
  context:
    cluster: podckpt-testbed
    user: $user
current-context: podckpt-testbed
EOF
    chmod 600 "$file"
}

pid_of() {
    [ -f "$1" ] || return 1
    local pid; pid=$(cat "$1")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

kubectl_admin() { "$KUBECTL" --kubeconfig "$ADMIN_KUBECONFIG" "$@"; }

cmd_cluster_start() {
    need_root
    install_kubectl
    command -v etcd >/dev/null || { log "no etcd: contrib/testbed.sh install"; exit 1; }
    [ -x "$SHARED_BIN/kube-apiserver" ] || { log "no kube-apiserver in $SHARED_BIN"; exit 1; }
    if pid_of "$CL_API_PIDFILE" >/dev/null; then cmd_cluster_stop; fi
    cluster_pki
    cluster_kubeconfig "$ADMIN_KUBECONFIG" admin
    cluster_kubeconfig "$NODE_KUBECONFIG" node
    # A bridge with no ports: a local address of its own (these kernels have
    # no dummy interface).
    ip link show "$CL_IFACE" >/dev/null 2>&1 || ip link add "$CL_IFACE" type bridge
    ip addr replace "$CL_NODE_IP/32" dev "$CL_IFACE"
    ip link set "$CL_IFACE" up
    # A fresh store each time: nothing of an earlier run is left in it.
    rm -rf "$CL_DIR/etcd"
    mkdir -p "$CL_DIR/etcd" "$TB_RUN_A"
    : >"$CL_DIR/etcd.log"
    setsid etcd --name podckpt-testbed --data-dir "$CL_DIR/etcd" \
        --listen-client-urls "$CL_ETCD" --advertise-client-urls "$CL_ETCD" \
        --listen-peer-urls http://127.0.0.1:2480 --initial-advertise-peer-urls http://127.0.0.1:2480 \
        --initial-cluster podckpt-testbed=http://127.0.0.1:2480 \
        >>"$CL_DIR/etcd.log" 2>&1 </dev/null &
    echo $! >"$CL_ETCD_PIDFILE"
    : >"$CL_DIR/kube-apiserver.log"
    setsid "$SHARED_BIN/kube-apiserver" \
        --etcd-servers "$CL_ETCD" \
        --bind-address "$CL_NODE_IP" --advertise-address "$CL_NODE_IP" --secure-port 6443 \
        --tls-cert-file "$CL_PKI/apiserver.crt" --tls-private-key-file "$CL_PKI/apiserver.key" \
        --client-ca-file "$CL_PKI/ca.crt" \
        --service-account-issuer https://kubernetes.default.svc \
        --service-account-key-file "$CL_PKI/sa.pub" --service-account-signing-key-file "$CL_PKI/sa.key" \
        --service-cluster-ip-range "$CL_SERVICES" \
        --authorization-mode Node,RBAC \
        --kubelet-client-certificate "$CL_PKI/apiserver-kubelet-client.crt" \
        --kubelet-client-key "$CL_PKI/apiserver-kubelet-client.key" \
        --kubelet-certificate-authority "$CL_PKI/ca.crt" \
        --kubelet-preferred-address-types InternalIP,Hostname \
        >>"$CL_DIR/kube-apiserver.log" 2>&1 </dev/null &
    echo $! >"$CL_API_PIDFILE"
    local i
    for i in $(seq 1 600); do
        if kubectl_admin get --raw /readyz >/dev/null 2>&1; then break; fi
        pid_of "$CL_API_PIDFILE" >/dev/null || { log "kube-apiserver died; see $CL_DIR/kube-apiserver.log"; tail -20 "$CL_DIR/kube-apiserver.log" >&2; exit 1; }
        sleep 0.1
    done
    kubectl_admin get --raw /readyz >/dev/null || { log "kube-apiserver is not ready; see $CL_DIR/kube-apiserver.log"; exit 1; }
    cmd_cluster_namespace default
    log "kube-apiserver $(pid_of "$CL_API_PIDFILE") ready at $CL_SERVER (KUBECONFIG=$ADMIN_KUBECONFIG)"
}

cmd_cluster_stop() {
    need_root
    local file pid
    for file in "$CL_API_PIDFILE" "$CL_ETCD_PIDFILE"; do
        if pid=$(pid_of "$file"); then
            kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -KILL "$pid" 2>/dev/null || true
        fi
        rm -f "$file"
    done
    ip link delete "$CL_IFACE" 2>/dev/null || true
    rm -rf "$CL_DIR/etcd"
    log "control plane stopped"
}

# What the controller-manager would make in a namespace, which pods need:
# the namespace, its default ServiceAccount, and the kube-root-ca.crt
# ConfigMap (a projected ServiceAccount token waits for it); and, as this
# API server carries OpenShift's patches (../shared/bin/README.md), the
# openshift-service-ca.crt ConfigMap it adds to that projection too.
cmd_cluster_namespace() {
    local ns=${1:?a namespace}
    kubectl_admin get namespace "$ns" >/dev/null 2>&1 || kubectl_admin create namespace "$ns" >/dev/null
    kubectl_admin -n "$ns" get serviceaccount default >/dev/null 2>&1 ||
        kubectl_admin -n "$ns" create serviceaccount default >/dev/null
    kubectl_admin -n "$ns" get configmap kube-root-ca.crt >/dev/null 2>&1 ||
        kubectl_admin -n "$ns" create configmap kube-root-ca.crt --from-file=ca.crt="$CL_PKI/ca.crt" >/dev/null
    kubectl_admin -n "$ns" get configmap openshift-service-ca.crt >/dev/null 2>&1 ||
        kubectl_admin -n "$ns" create configmap openshift-service-ca.crt \
            --from-file=service-ca.crt="$CL_PKI/ca.crt" >/dev/null
}

# What the DaemonSet controller would do on this one-node cluster: for each
# DaemonSet, a pod of its template on node podckpt-node, owned by it, if it
# has none yet. The DaemonSet itself is as the user applied it.
cmd_cluster_daemonsets() {
    local ns
    for ns in $(kubectl_admin get daemonsets -A -o jsonpath='{range .items[*]}{.metadata.namespace}{"\n"}{end}' | sort -u); do
        cmd_cluster_namespace "$ns"
    done
    kubectl_admin get daemonsets -A -o json | python3 -c '
import json, sys
node = sys.argv[1]
pods = []
for ds in json.load(sys.stdin)["items"]:
    template = ds["spec"]["template"]
    meta = template.get("metadata", {})
    pods.append({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": ds["metadata"]["name"] + "-",
            "namespace": ds["metadata"]["namespace"],
            "labels": meta.get("labels", {}),
            "annotations": meta.get("annotations", {}),
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "DaemonSet", "name": ds["metadata"]["name"],
                "uid": ds["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True,
            }],
        },
        "spec": dict(template["spec"], nodeName=node),
    })
print(json.dumps({"apiVersion": "v1", "kind": "List", "items": pods}))
' "$CL_NODE" >"$CL_DIR/daemonset-pods.json"
    local count existing
    count=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["items"]))' "$CL_DIR/daemonset-pods.json")
    for i in $(seq 0 $((count - 1))); do
        python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))["items"][int(sys.argv[2])]))' \
            "$CL_DIR/daemonset-pods.json" "$i" >"$CL_DIR/daemonset-pod.json"
        local ns owner
        ns=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metadata"]["namespace"])' "$CL_DIR/daemonset-pod.json")
        owner=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metadata"]["ownerReferences"][0]["uid"])' "$CL_DIR/daemonset-pod.json")
        existing=$(kubectl_admin -n "$ns" get pods -o json | python3 -c '
import json, sys
print(sum(1 for p in json.load(sys.stdin)["items"] for o in p["metadata"].get("ownerReferences", []) if o["uid"] == sys.argv[1]))' "$owner")
        if [ "$existing" = 0 ]; then
            kubectl_admin create -f "$CL_DIR/daemonset-pod.json" >/dev/null
            log "made the pod of DaemonSet $ns/$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["metadata"]["ownerReferences"][0]["name"])' "$CL_DIR/daemonset-pod.json") on $CL_NODE"
        fi
    done
}

# The agent's image, from a podckpt-agent binary (as a user builds it:
# contrib/images/build-agent-image.sh), loaded into node A's containerd.
cmd_agent_image() {
    local binary=${1:?the podckpt-agent binary}
    mkdir -p "$IMAGES_DIR"
    PODCKPT_AGENT_IMAGE=$AGENT_IMAGE bash "$HERE/images/build-agent-image.sh" "$binary" "$IMAGES_DIR/podckpt-agent.tar"
    ctr -a "$TB_RUN_A/containerd.sock" -n "$NS" images import "$IMAGES_DIR/podckpt-agent.tar" >/dev/null
    log "image $AGENT_IMAGE loaded into node A's containerd"
}
