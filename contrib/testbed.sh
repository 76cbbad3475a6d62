#!/usr/bin/env bash
# The podckpt test bed: node A, a private containerd and a private CRI-O, and
# node B, a second containerd beside them, to restore on what node A
# checkpointed (each with its own root, state, sockets, runc root and CNI
# bridge); runc, crun, runsc and CRIU from Debian trixie, CRI-O built from
# upstream (../shared/bin), and locally built images.
#
#   contrib/testbed.sh install   apt packages and the interop clients (idempotent)
#   contrib/testbed.sh images    build the OCI test images into $PODCKPT_TESTBED_DIR/images
#   contrib/testbed.sh start [containerd|crio]
#                                start node A's containerd and node B's, and CRI-O (or
#                                the containerds alone, or CRI-O alone), images loaded;
#                                first put in place every binary their configs name
#                                (building podckpt-runc if there is none), and restart
#                                a running test bed that another configuration or
#                                build started (see `fingerprint`)
#   contrib/testbed.sh stop      remove every pod, stop every runtime of both nodes,
#                                leave nothing behind
#   contrib/testbed.sh stop-daemon  stop node A's containerd alone; pods keep running
#   contrib/testbed.sh up [containerd|crio]   install + images + start
#   contrib/testbed.sh kubelet-start SOCKET
#                                a kubelet 1.36 (../shared/bin), standalone, whose runtime is
#                                the podckptd at SOCKET (static pods from its manifest dir)
#   contrib/testbed.sh kubelet-stop
#                                its pods stopped, the kubelet stopped, the host settings it
#                                changed put back, its mounts gone
#   contrib/testbed.sh cluster-start | cluster-stop
#                                etcd and kube-apiserver 1.36 (testbed/cluster.sh), for the kubelet
#                                started with `kubelet-start SOCKET cluster` (node podckpt-node)
#   contrib/testbed.sh cluster-namespace NS | cluster-daemonsets | agent-image BINARY
#                                what a controller-manager would do that pods need; the node
#                                agent's image, from a podckpt-agent binary
#   contrib/testbed.sh env       print the variables the tests read
#   PODCKPT_TESTBED_NODE=b contrib/testbed.sh start|stop|stop-daemon|restart|status
#                                the same for node B's containerd alone
#
# Why a private containerd: the node's own containerd (if any) must never see
# our test pods, and the tests must be able to stop and start it at will.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUSYBOX_IMAGE=podckpt.local/busybox:latest
PAUSE_IMAGE=podckpt.local/pause:latest
# deploy/kubernetes/daemonset.yaml's image, built from a podckpt-agent binary.
AGENT_IMAGE=podckpt.local/podckpt-agent:0.1.0
NS=k8s.io
# Node A: the test bed's first containerd, and its CRI-O.
TB_DIR_A=${PODCKPT_TESTBED_DIR:-/var/lib/podckpt-testbed}
TB_RUN_A=${PODCKPT_TESTBED_RUN:-/run/podckpt-testbed}
# Node B: a second, independent containerd (no CRI-O), in sibling
# directories, never inside node A's.
TB_DIR_B=${PODCKPT_TESTBED_DIR_B:-$TB_DIR_A-b}
TB_RUN_B=${PODCKPT_TESTBED_RUN_B:-$TB_RUN_A-b}
# Shared by both nodes: the images (built once) and the podckpt binaries
# (podckpt-runc, podckpt-crun, podckpt-runsc, which the tests install there).
IMAGES_DIR="$TB_DIR_A/images"
BIN_DIR="$TB_RUN_A/bin"

# Sets the variables of node $1 (a or b) that the containerd functions use.
use_node() {
    NODE=$1
    case "$NODE" in
        a)
            TB_DIR=$TB_DIR_A TB_RUN=$TB_RUN_A
            BRIDGE=podckpt0 SUBNET=10.244.77.0/24 NETWORK=podckpt-testbed
            # Node A's runc handlers name no Root: runc keeps CRI containers'
            # state under the shim's default, whatever containerd's state
            # dir is (see shared/notes/runtime-facts.md).
            RUNC_STATE=/run/containerd/runc
            ;;
        b)
            TB_DIR=$TB_DIR_B TB_RUN=$TB_RUN_B
            # 10.244.78.0/24 and podckpt1 are CRI-O's (testbed/20-podckpt-crio.conflist).
            BRIDGE=podckpt2 SUBNET=10.244.79.0/24 NETWORK=podckpt-testbed-b
            # The Root of node B's runc handlers (containerd-config.toml).
            RUNC_STATE=$TB_RUN_B/runc
            ;;
        *) log "unknown node $NODE (PODCKPT_TESTBED_NODE: a or b)"; exit 2 ;;
    esac
    SOCK="$TB_RUN/containerd.sock"
    PIDFILE="$TB_RUN/containerd.pid"
    LOG="$TB_DIR/containerd.log"
    # The shim adds the namespace to its runc root.
    RUNC_ROOT=$RUNC_STATE/$NS
}

log() { printf 'testbed: %s\n' "$*" >&2; }

# The node the per-node commands (start, stop, stop-daemon, status) act on:
# node A by default, which also starts and stops node B with it.
use_node "${PODCKPT_TESTBED_NODE:-a}"
SELECTED_NODE=$NODE
# CRI-O: no registry packages it; the team keeps an upstream build beside the
# repository (see ../shared/bin/README.md). It runs on node A only.
SHARED_BIN=${PODCKPT_SHARED_BIN:-$HERE/../../shared/bin}
CRIO_SOCK="$TB_RUN_A/crio.sock"
CRIO_PIDFILE="$TB_RUN_A/crio.pid"
CRIO_LOG="$TB_DIR_A/crio.log"
CRIO_RUNC_ROOT="$TB_RUN_A/crio/runc"
# The grpc-go and grpcio clients of the interop tests (contrib/interop/).
INTEROP_DIR="$TB_DIR_A/interop"
INTEROP_GO="$INTEROP_DIR/go/podckpt-interop"
INTEROP_VENV="$INTEROP_DIR/venv"
GO=/usr/lib/go-1.24/bin/go
# Named by version: installing from trixie makes /usr/bin/python3 Debian's
# 3.13, and grpcio's wheels are built for one CPython version.
INTEROP_PYTHON_BASE=/usr/bin/python3.11

need_root() {
    [ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
}

cmd_install() {
    need_root
    install_packages
    install_kubectl
    install_interop_go
    install_interop_python
}

install_packages() {
    # Only the runtime stack (and Go with grpc-go, which bookworm has too old)
    # comes from trixie; the rest stays bookworm's. trixie's criu pulls in
    # trixie's python3 anyway, so pip comes from there too.
    local trixie_pkgs=(containerd runc crun criu checkpointctl containernetworking-plugins
        golang-1.24-go golang-google-grpc-dev python3-pip python3-pycriu runsc
        conmon skopeo libseccomp2 libsqlite3-0 etcd-server)
    local pkgs=(busybox-static protobuf-compiler iproute2 python3 python3.11 age zstd util-linux libcap2-bin curl openssl)
    if have_all_packages; then
        log "packages already installed"
        return
    fi
    export DEBIAN_FRONTEND=noninteractive
    # Debian 12's CRIU 3.17 fails `criu check` on this kernel; trixie's 4.1 works.
    # Pin trixie low so that only what we ask for with -t trixie comes from it.
    if [ ! -f /etc/apt/sources.list.d/podckpt-trixie.sources ]; then
        cat >/etc/apt/sources.list.d/podckpt-trixie.sources <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        cat >/etc/apt/preferences.d/podckpt-trixie <<'EOF'
Package: *
Pin: release n=trixie
Pin-Priority: 100
EOF
    fi
    apt-get update -qq
    apt-get install -y -qq -o Dpkg::Options::=--force-confold "${pkgs[@]}" >/dev/null
    apt-get install -y -qq -t trixie -o Dpkg::Options::=--force-confold "${trixie_pkgs[@]}" >/dev/null
    # The package may start its own containerd where systemd runs; ours is private.
    have_all_packages || { log "install incomplete"; exit 1; }
    log "installed: $(containerd --version), $(runc --version | head -1), criu $(criu --version | head -1)"
}

have_all_packages() {
    local b
    for b in containerd ctr runc crun runsc conmon skopeo criu crit checkpointctl protoc busybox age age-keygen zstd ip setpriv capsh curl openssl etcd python3 "$GO" "$INTEROP_PYTHON_BASE"; do
        command -v "$b" >/dev/null || return 1
    done
    [ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] && [ -x /usr/lib/cni/loopback ] || return 1
    criu --version 2>/dev/null | grep -qE 'Version: (4|[5-9])\.' || return 1
    # CRI-O needs trixie's libseccomp (seccomp_transaction_reject).
    "$SHARED_BIN/crio" --version >/dev/null 2>&1 || return 1
    [ -f /usr/share/gocode/src/google.golang.org/grpc/clientconn.go ] || return 1
    "$INTEROP_PYTHON_BASE" -m pip --version >/dev/null 2>&1 || return 1
}

# The grpc-go client, built in GOPATH mode from Debian's grpc-go: no module
# proxy. Rebuilt when its source changed since the last build.
install_interop_go() {
    local src="$HERE/interop/go/src/podckpt-interop/main.go" built="$INTEROP_DIR/go/main.go.built"
    if [ -x "$INTEROP_GO" ] && cmp -s "$src" "$built"; then
        log "grpc-go interop client up to date"
        return
    fi
    mkdir -p "$INTEROP_DIR/go"
    GO111MODULE=off GOFLAGS= GOTOOLCHAIN=local GOPATH="$HERE/interop/go:/usr/share/gocode" \
        GOCACHE="$INTEROP_DIR/go/cache" "$GO" build -o "$INTEROP_GO.new" podckpt-interop
    mv "$INTEROP_GO.new" "$INTEROP_GO"
    cp "$src" "$built"
    log "built $INTEROP_GO"
}

# grpcio from PyPI in a venv of Debian's python3.11. The venv has no pip of
# its own (python3.11-venv cannot be installed next to trixie's python3);
# the system pip installs into it with --python.
install_interop_python() {
    local py="$INTEROP_VENV/bin/python"
    if "$py" -c 'import grpc' 2>/dev/null; then
        log "grpcio $("$py" -c 'import grpc; print(grpc.__version__)') already installed"
        return
    fi
    rm -rf "$INTEROP_VENV"
    "$INTEROP_PYTHON_BASE" -m venv --without-pip "$INTEROP_VENV"
    "$INTEROP_PYTHON_BASE" -m pip --python "$py" install -q --disable-pip-version-check grpcio
    log "installed grpcio $("$py" -c 'import grpc; print(grpc.__version__)') for $INTEROP_PYTHON_BASE"
}

cmd_images() {
    mkdir -p "$IMAGES_DIR"
    python3 "$HERE/images/build-oci.py" --busybox "$(command -v busybox)" \
        --out "$IMAGES_DIR/busybox.tar" --name "$BUSYBOX_IMAGE" --cmd /bin/sh
    # The pause container only has to sleep forever and die on a signal.
    python3 "$HERE/images/build-oci.py" --busybox "$(command -v busybox)" \
        --out "$IMAGES_DIR/pause.tar" --name "$PAUSE_IMAGE" --pause --cmd /pause
}

# The current node's containerd config and CNI network, from the templates.
write_config() {
    mkdir -p "$TB_DIR/containerd" "$TB_DIR/cni/net.d" "$TB_RUN/containerd" "$TB_DIR/cni/networks"
    # Lines marked @NODE_B_ONLY@ are node B's alone.
    local only_b='/@NODE_B_ONLY@/d'
    if [ "$NODE" = b ]; then
        only_b='s|@NODE_B_ONLY@||'
        mkdir -p "$RUNC_STATE"
    fi
    sed -e "$only_b" -e "s|@TB_DIR@|$TB_DIR|g" -e "s|@TB_RUN@|$TB_RUN|g" -e "s|@BIN_DIR@|$BIN_DIR|g" \
        -e "s|@PAUSE_IMAGE@|$PAUSE_IMAGE|g" \
        "$HERE/testbed/containerd-config.toml" >"$TB_DIR/containerd-config.toml"
    sed -e "s|@TB_DIR@|$TB_DIR|g" -e "s|@NETWORK@|$NETWORK|g" -e "s|@BRIDGE@|$BRIDGE|g" \
        -e "s|@SUBNET@|$SUBNET|g" "$HERE/testbed/10-podckpt.conflist" \
        >"$TB_DIR/cni/net.d/10-podckpt.conflist"
}

running_pid() {
    [ -f "$PIDFILE" ] || return 1
    local pid; pid=$(cat "$PIDFILE")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# crun refuses a hybrid cgroup layout whose cgroup2 mount has controllers
# ("cgroups in hybrid mode not supported, drop all controllers from
# cgroupv2"). On this kind of machine hugetlb alone is left on cgroup2; runc
# does not mind either way. A v1 hierarchy of its own takes the controller
# off cgroup2 (the kernel allows it while no cgroup2 subtree uses it).
free_cgroup2_controllers() {
    local unified=/sys/fs/cgroup/unified c
    # Pure v1 has no such file there, pure v2 is mounted at /sys/fs/cgroup.
    [ -f "$unified/cgroup.controllers" ] || return 0
    for c in $(cat "$unified/cgroup.controllers"); do
        mkdir -p "/sys/fs/cgroup/$c"
        if mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c"; then
            log "cgroup controller $c moved to a v1 hierarchy, for crun"
        else
            log "could not move cgroup controller $c off cgroup2; crun will not run here"
        fi
    done
}

# Everything the runtimes' configs name must exist before a runtime starts:
# CRI-O drops a handler whose runtime_path is missing at start, with only a
# warning, and never looks again. podckpt-runc (also under the names
# podckpt-crun and podckpt-runsc) is built here if there is none; a newer
# build (the tests', the demo's) replaces it in place, which needs no
# restart: the runtimes run it afresh for every container.
install_handler_binaries() {
    mkdir -p "$BIN_DIR"
    if [ ! -x "$BIN_DIR/podckpt-runc" ]; then
        log "building podckpt-runc for the runtimes' podckpt handlers"
        (cd "$HERE/.." && cargo build --locked --quiet --bin podckpt-runc)
        install -m 0755 "$HERE/../target/debug/podckpt-runc" "$BIN_DIR/podckpt-runc.new"
        mv "$BIN_DIR/podckpt-runc.new" "$BIN_DIR/podckpt-runc"
    fi
    ln -sfn podckpt-runc "$BIN_DIR/podckpt-crun"
    ln -sfn podckpt-runc "$BIN_DIR/podckpt-runsc"
    if ! cmp -s "$SHARED_BIN/pinns" "$BIN_DIR/pinns"; then
        install -m 0755 "$SHARED_BIN/pinns" "$BIN_DIR/pinns"
    fi
}

# What a running test bed was started from: this script and its config
# templates, the directories they are filled in with, the runtime daemons'
# own binaries, and which of the binaries the configs name were there. A
# test bed started by another commit or checkout, by an older containerd or
# CRI-O, or before podckpt-runc existed has another fingerprint, or none.
fingerprint() {
    {
        cat "$HERE/testbed.sh"
        find "$HERE/testbed" -type f -print0 | sort -z | xargs -0 cat
        echo "$TB_DIR_A $TB_RUN_A $TB_DIR_B $TB_RUN_B $SHARED_BIN"
        sha256sum "$(command -v containerd)" "$SHARED_BIN/crio"
        local b
        for b in "$BIN_DIR"/podckpt-runc "$BIN_DIR"/podckpt-crun "$BIN_DIR"/podckpt-runsc "$BIN_DIR"/pinns \
            runc crun runsc conmon containerd-shim-runc-v2; do
            if [ -x "$b" ] || command -v "$b" >/dev/null; then echo "$b present"; else echo "$b missing"; fi
        done
    } | sha256sum | cut -d' ' -f1
}
FINGERPRINT_FILE="$TB_RUN_A/testbed.fingerprint"

# Whether any runtime of the test bed (either node, or CRI-O) is running.
any_running() {
    running_pid >/dev/null && return 0
    (use_node b && running_pid >/dev/null) && return 0
    crio_pid >/dev/null
}

# A test bed left running by another configuration or build is stopped
# whole, so that what starts next is what this checkout would start.
restart_if_stale() {
    local want=$1
    any_running || return 0
    local had
    had=$(cat "$FINGERPRINT_FILE" 2>/dev/null || echo none)
    [ "$had" = "$want" ] && return 0
    log "the running test bed was started from another configuration or build (fingerprint $had, now $want): restarting it"
    (use_node a && cmd_stop_all)
}

# Starts what is not running yet of the runtimes asked for: by default node
# A's containerd, node B's containerd and CRI-O; "containerd" both
# containerds; "crio" CRI-O alone. With PODCKPT_TESTBED_NODE=b, node B's
# containerd alone.
cmd_start() {
    need_root
    local which=${1:-both}
    case "$which" in
        containerd | crio | both) ;;
        *) log "unknown runtime $which (containerd, crio, or neither for both)"; exit 2 ;;
    esac
    if [ "$SELECTED_NODE" = b ] && [ "$which" = crio ]; then
        log "node B has no CRI-O"
        exit 2
    fi
    free_cgroup2_controllers
    [ -f "$IMAGES_DIR/busybox.tar" ] || cmd_images
    install_handler_binaries
    local want
    want=$(fingerprint)
    restart_if_stale "$want"
    mkdir -p "$TB_RUN_A"
    echo "$want" >"$FINGERPRINT_FILE"
    if [ "$which" != crio ]; then
        start_containerd
        if [ "$SELECTED_NODE" = a ]; then (use_node b && start_containerd); fi
    fi
    if [ "$which" != containerd ] && [ "$SELECTED_NODE" = a ]; then start_crio; fi
}

# Starts the current node's containerd, unless it runs already.
start_containerd() {
    if pid=$(running_pid); then
        log "node $NODE: containerd already running (pid $pid) on $SOCK"
        return
    fi
    write_config
    rm -f "$SOCK" "$SOCK.ttrpc"
    # setsid: the daemon must outlive the shell that started it and must not
    # get the terminal's signals.
    setsid containerd --config "$TB_DIR/containerd-config.toml" >>"$LOG" 2>&1 </dev/null &
    echo $! >"$PIDFILE"
    local i
    for i in $(seq 1 100); do
        if ctr -a "$SOCK" version >/dev/null 2>&1; then break; fi
        running_pid >/dev/null || { log "containerd died; see $LOG"; tail -20 "$LOG" >&2; exit 1; }
        sleep 0.1
    done
    ctr -a "$SOCK" version >/dev/null 2>&1 || { log "containerd did not answer; see $LOG"; exit 1; }
    local img
    for img in busybox pause; do
        ctr -a "$SOCK" -n "$NS" images import --no-unpack=false "$IMAGES_DIR/$img.tar" >/dev/null
    done
    log "node $NODE: containerd $(running_pid) listening on $SOCK"
}

crio_pid() {
    [ -f "$CRIO_PIDFILE" ] || return 1
    local pid; pid=$(cat "$CRIO_PIDFILE")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

start_crio() {
    if pid=$(crio_pid); then
        log "CRI-O already running (pid $pid) on $CRIO_SOCK"
        return
    fi
    # CRI-O belongs to node A.
    local TB_DIR=$TB_DIR_A TB_RUN=$TB_RUN_A
    mkdir -p "$TB_DIR/crio/net.d" "$TB_DIR/crio/cni-networks" "$TB_RUN/crio" "$TB_RUN/bin"
    sed -e "s|@TB_DIR@|$TB_DIR|g" -e "s|@TB_RUN@|$TB_RUN|g" -e "s|@PAUSE_IMAGE@|$PAUSE_IMAGE|g" \
        "$HERE/testbed/crio.conf" >"$TB_DIR/crio/crio.conf"
    sed -e "s|@TB_DIR@|$TB_DIR|g" "$HERE/testbed/20-podckpt-crio.conflist" \
        >"$TB_DIR/crio/net.d/20-podckpt-crio.conflist"
    # No signatures on our own images: the policy lets them in.
    echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$TB_DIR/crio/policy.json"
    local img
    for img in busybox pause; do
        skopeo --policy "$TB_DIR/crio/policy.json" copy -q "oci-archive:$IMAGES_DIR/$img.tar" \
            "containers-storage:[overlay@$TB_DIR/crio/storage+$TB_RUN/crio/storage]podckpt.local/$img:latest"
    done
    rm -f "$CRIO_SOCK"
    setsid "$SHARED_BIN/crio" --config "$TB_DIR/crio/crio.conf" >>"$CRIO_LOG" 2>&1 </dev/null &
    echo $! >"$CRIO_PIDFILE"
    local i
    for i in $(seq 1 150); do
        [ -S "$CRIO_SOCK" ] && break
        crio_pid >/dev/null || { log "CRI-O died; see $CRIO_LOG"; tail -20 "$CRIO_LOG" >&2; exit 1; }
        sleep 0.1
    done
    [ -S "$CRIO_SOCK" ] || { log "CRI-O did not listen; see $CRIO_LOG"; exit 1; }
    log "CRI-O $(crio_pid) listening on $CRIO_SOCK"
}

# Removes every container of the test bed's CRI-O (through runc: CRI-O has
# no client here), stops it and its conmons, and what they leave.
stop_crio() {
    local c
    for c in $(runc --root "$CRIO_RUNC_ROOT" list -q 2>/dev/null); do
        runc --root "$CRIO_RUNC_ROOT" delete --force "$c" >/dev/null 2>&1 || true
    done
    if pid=$(crio_pid); then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$CRIO_PIDFILE" "$CRIO_SOCK"
    local m
    for m in $(pgrep -f -- "conmon .*$TB_RUN_A/crio/" || true); do kill -KILL "$m" 2>/dev/null || true; done
    ip link delete podckpt1 2>/dev/null || true
}

# Stops both nodes (node B first) and what they leave behind; with
# PODCKPT_TESTBED_NODE=b, node B alone.
cmd_stop() {
    need_root
    if [ "$SELECTED_NODE" = a ]; then
        cmd_stop_all
    else
        stop_containerd
    fi
}

# The kubelet, both nodes, node B first, and CRI-O with node A.
cmd_stop_all() {
    if kubelet_pid >/dev/null || [ -f "$KL_DIR/sysctls" ]; then cmd_kubelet_stop; fi
    if pid_of "$CL_API_PIDFILE" >/dev/null || pid_of "$CL_ETCD_PIDFILE" >/dev/null; then cmd_cluster_stop; fi
    (use_node b && stop_containerd)
    (use_node a && stop_containerd)
    rm -f "$FINGERPRINT_FILE"
}

# Removes every task and container the current node's containerd knows, then
# stops it and cleans up what the CRI plugin leaves behind when it is killed:
# network namespaces, shm mounts and sandbox rootfs mounts under the node's
# own directories. Node A's CRI-O goes with node A.
stop_containerd() {
    local pid c
    if pid=$(running_pid); then
        for c in $(ctr -a "$SOCK" -n "$NS" containers ls -q 2>/dev/null); do
            ctr -a "$SOCK" -n "$NS" tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
        done
        for c in $(ctr -a "$SOCK" -n "$NS" containers ls -q 2>/dev/null); do
            for _ in $(seq 1 50); do
                ctr -a "$SOCK" -n "$NS" tasks delete -f "$c" >/dev/null 2>&1 && break
                ctr -a "$SOCK" -n "$NS" tasks ls -q 2>/dev/null | grep -qx "$c" || break
                sleep 0.1
            done
            ctr -a "$SOCK" -n "$NS" containers delete "$c" >/dev/null 2>&1 || true
        done
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PIDFILE"
    if [ "$NODE" = a ]; then stop_crio; fi
    # Shims outlive a killed containerd; ours are the ones whose address is
    # this node's socket.
    local shim
    for shim in $(pgrep -f "containerd-shim-runc-v2 .*-address $SOCK( |\$)" || true); do
        kill -KILL "$shim" 2>/dev/null || true
    done
    # gVisor sandboxes and gofers of our runsc root outlive a killed shim.
    local r
    for r in $(pgrep -f -- "--root[= ]$TB_RUN/runsc/" || true); do
        kill -KILL "$r" 2>/dev/null || true
    done
    # Node B's runc root is its own: whatever a killed shim left in it goes
    # (node A's is the shim's default, which other containerds may share).
    if [ "$NODE" = b ] && [ -d "$RUNC_ROOT" ]; then
        for c in $(ls "$RUNC_ROOT"); do
            runc --root "$RUNC_ROOT" delete --force "$c" >/dev/null 2>&1 ||
                crun --root "$RUNC_ROOT" delete --force "$c" >/dev/null 2>&1 || true
        done
    fi
    # Mounts under this node's directories: the directory itself or below it,
    # never the other node's (node B's directories are node A's plus "-b").
    local m
    while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
        awk -v a="$TB_DIR" -v b="$TB_RUN" \
            '$5 == a || $5 == b || index($5, a "/") == 1 || index($5, b "/") == 1 {print $5}' \
            /proc/self/mountinfo | sort -r)
    if [ "$NODE" = a ]; then
        # Network namespaces the CRI plugin made for node A's pods (named cni-*).
        # Node B keeps its own under its state dir: unmounted above.
        local ns
        for ns in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do
            ip netns delete "$ns" 2>/dev/null || true
        done
    fi
    ip link delete "$BRIDGE" 2>/dev/null || true
    if [ "$NODE" = a ]; then
        # CRI-O's storage goes whole; `start` puts the images back.
        rm -rf "$TB_DIR/cni/networks"/* "$TB_RUN/containerd" "$TB_RUN/runsc" "$TB_RUN/crio" "$TB_RUN/seccomp" "$TB_DIR/crio"
    else
        rm -rf "$TB_DIR/cni/networks"/* "$TB_RUN/containerd" "$TB_RUN/runsc" "$RUNC_STATE"
    fi
    rm -f "$SOCK" "$SOCK.ttrpc"
    log "node $NODE stopped"
}

# The test bed's kubelet: standalone, one at a time, in front of a podckptd
# the caller runs. It changes three host sysctls (vm.overcommit_memory,
# kernel.panic, kernel.panic_on_oops), saved here before it starts and put
# back when it stops.
KL_DIR="$TB_DIR_A/kubelet"
KL_PIDFILE="$TB_RUN_A/kubelet.pid"
KL_SYSCTLS="vm.overcommit_memory kernel.panic kernel.panic_on_oops"
KL_HEALTHZ=http://127.0.0.1:10348/healthz
KL_PODS=https://127.0.0.1:10350/pods

kubelet_pid() {
    [ -f "$KL_PIDFILE" ] || return 1
    local pid; pid=$(cat "$KL_PIDFILE")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

cmd_kubelet_start() {
    need_root
    local socket=${1:-} mode=${2:-standalone}
    [ -S "$socket" ] || { log "kubelet-start needs podckptd's socket (got '${socket}')"; exit 2; }
    case "$mode" in
        standalone | cluster) ;;
        *) log "kubelet-start SOCKET [cluster]: unknown mode $mode"; exit 2 ;;
    esac
    [ -x "$SHARED_BIN/kubelet" ] || { log "no kubelet in $SHARED_BIN"; exit 1; }
    # One at a time: a leftover is stopped first, its settings put back.
    if kubelet_pid >/dev/null; then cmd_kubelet_stop; fi
    rm -rf "$KL_DIR/manifests" "$KL_DIR/logs"
    mkdir -p "$KL_DIR/manifests" "$KL_DIR/logs" "$KL_DIR/root" "$TB_RUN_A"
    local key
    for key in $KL_SYSCTLS; do echo "$key=$(sysctl -n "$key")"; done >"$KL_DIR/sysctls"
    local keep=STANDALONE drop=CLUSTER registered=()
    if [ "$mode" = cluster ]; then
        [ -f "$NODE_KUBECONFIG" ] || { log "no control plane: contrib/testbed.sh cluster-start first"; exit 2; }
        keep=CLUSTER drop=STANDALONE
        registered=(--kubeconfig "$NODE_KUBECONFIG" --node-ip "$CL_NODE_IP")
    fi
    sed -e "/@$drop@/d" -e "s|@$keep@||" -e "s|@KL_DIR@|$KL_DIR|g" -e "s|@SOCKET@|$socket|g" \
        -e "s|@NODE_IP@|$CL_NODE_IP|g" -e "s|@PKI@|$CL_PKI|g" "$HERE/testbed/kubelet-config.yaml" >"$KL_DIR/config.yaml"
    echo "$mode" >"$KL_DIR/mode"
    : >"$KL_DIR/kubelet.log"
    setsid "$SHARED_BIN/kubelet" --config "$KL_DIR/config.yaml" --root-dir "$KL_DIR/root" \
        --cert-dir "$KL_DIR/root/pki" --hostname-override podckpt-node \
        "${registered[@]}" >>"$KL_DIR/kubelet.log" 2>&1 </dev/null &
    echo $! >"$KL_PIDFILE"
    local i
    for i in $(seq 1 300); do
        if curl -fs "$KL_HEALTHZ" >/dev/null 2>&1; then break; fi
        kubelet_pid >/dev/null || { log "the kubelet died; see $KL_DIR/kubelet.log"; tail -20 "$KL_DIR/kubelet.log" >&2; exit 1; }
        sleep 0.1
    done
    curl -fs "$KL_HEALTHZ" >/dev/null || { log "the kubelet is not healthy; see $KL_DIR/kubelet.log"; exit 1; }
    log "kubelet $(kubelet_pid) running on podckptd $socket, manifests in $KL_DIR/manifests"
}

# The pods the kubelet runs (its /pods: on loopback standalone; registered,
# on the node's address, as the API server asks it).
kubelet_running_pods() {
    local url=$KL_PODS auth=()
    if [ "$(cat "$KL_DIR/mode" 2>/dev/null)" = cluster ]; then
        url="https://$CL_NODE_IP:10350/pods"
        auth=(--cert "$CL_PKI/apiserver-kubelet-client.crt" --key "$CL_PKI/apiserver-kubelet-client.key")
    fi
    curl -fsk "${auth[@]}" "$url" 2>/dev/null | python3 -c 'import json,sys
print(sum(1 for p in json.load(sys.stdin).get("items") or [] for c in p.get("status", {}).get("containerStatuses") or [] if "running" in c.get("state", {})))' 2>/dev/null || echo 0
}

cmd_kubelet_stop() {
    need_root
    local pid
    if pid=$(kubelet_pid); then
        # Its pods first, while it runs: it stops what it started.
        rm -f "$KL_DIR/manifests"/*
        for _ in $(seq 1 300); do [ "$(kubelet_running_pods)" = 0 ] && break; sleep 0.1; done
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$KL_PIDFILE"
    if [ -f "$KL_DIR/sysctls" ]; then
        local setting
        while read -r setting; do sysctl -qw "$setting" || true; done <"$KL_DIR/sysctls"
        rm -f "$KL_DIR/sysctls"
    fi
    # The kubelet bind-mounts its root directory onto itself, and volumes below it.
    local m
    while read -r m; do umount -l "$m" 2>/dev/null || true; done < <(
        awk -v d="$KL_DIR" '$5 == d || index($5, d "/") == 1 {print $5}' /proc/self/mountinfo | sort -r)
    rm -rf "$KL_DIR/root"
    log "kubelet stopped"
}

# The same whichever node PODCKPT_TESTBED_NODE selects: node A's parts,
# and node B's with the suffix _B.
cmd_env() {
    (
        use_node a
        echo "PODCKPT_TEST_CONTAINERD=$SOCK"
        echo "PODCKPT_TEST_CRIO=$CRIO_SOCK"
        echo "PODCKPT_TEST_CRIO_RUNC_ROOT=$CRIO_RUNC_ROOT"
        echo "PODCKPT_TEST_BUSYBOX_IMAGE=$BUSYBOX_IMAGE"
        echo "PODCKPT_TEST_RUNC_ROOT=$RUNC_ROOT"
        use_node b
        echo "PODCKPT_TEST_CONTAINERD_B=$SOCK"
        echo "PODCKPT_TEST_RUNC_ROOT_B=$RUNC_ROOT"
    )
    echo "PODCKPT_TESTBED=$HERE/testbed.sh"
    # The kubelet's static pod manifests and its log (kubelet-start).
    echo "PODCKPT_TEST_KUBELET_DIR=$KL_DIR"
    # The control plane's kubectl and its admin kubeconfig (cluster-start).
    echo "PODCKPT_TEST_KUBECTL=$KUBECTL"
    echo "PODCKPT_TEST_KUBECONFIG=$ADMIN_KUBECONFIG"
    # Where both nodes' "podckpt" runtime handler finds podckpt-runc.
    echo "PODCKPT_TESTBED_INTERPOSER=$BIN_DIR/podckpt-runc"
    # The interop tests' grpc-go client, and the interpreter (with grpcio)
    # that runs contrib/interop/python/podckpt_interop.py.
    echo "PODCKPT_INTEROP_GO=$INTEROP_GO"
    echo "PODCKPT_INTEROP_PYTHON=$INTEROP_VENV/bin/python"
}

# The control plane (etcd, kube-apiserver, kubectl): contrib/testbed/cluster.sh.
# shellcheck source=testbed/cluster.sh
. "$HERE/testbed/cluster.sh"

case "${1:-}" in
    install) cmd_install ;;
    images) cmd_images ;;
    start) cmd_start "${2:-}" ;;
    stop) cmd_stop ;;
    restart) cmd_stop; cmd_start "${2:-}" ;;
    # Stops only the daemon: its shims and pods keep running, as on a node
    # whose containerd is being upgraded. `start` brings it back.
    stop-daemon) need_root; if pid=$(running_pid); then kill -TERM "$pid"; while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done; fi; rm -f "$PIDFILE" ;;
    up) cmd_install; cmd_images; cmd_start "${2:-}" ;;
    env) cmd_env ;;
    kubelet-start) cmd_kubelet_start "${2:-}" "${3:-}" ;;
    kubelet-stop) cmd_kubelet_stop ;;
    cluster-start) cmd_cluster_start ;;
    cluster-stop) cmd_cluster_stop ;;
    cluster-namespace) cmd_cluster_namespace "${2:-}" ;;
    cluster-daemonsets) cmd_cluster_daemonsets ;;
    agent-image) cmd_agent_image "${2:-}" ;;
    status) if pid=$(running_pid); then echo "running pid $pid socket $SOCK"; else echo "stopped"; exit 3; fi ;;
    *) sed -n '2,31p' "$0" >&2; exit 2 ;;
esac
