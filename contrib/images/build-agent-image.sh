#!/usr/bin/env bash
# The node agent's image (deploy/kubernetes/daemonset.yaml's
# podckpt.local/podckpt-agent:0.1.0), as an OCI archive, from a
# podckpt-agent binary: the binary, the shared libraries it links, and
# nothing else (no shell). No registry or Docker is needed:
#
#   contrib/images/build-agent-image.sh target/release/podckpt-agent podckpt-agent.tar
#
# Then on each node: `ctr -n k8s.io images import podckpt-agent.tar`
# (containerd), or `skopeo copy oci-archive:podckpt-agent.tar
# containers-storage:podckpt.local/podckpt-agent:0.1.0` (CRI-O); or push it
# to your registry and name it in a kustomization's `images:`.
set -euo pipefail
binary=${1:?the podckpt-agent binary}
out=${2:?the OCI archive to write}
name=${PODCKPT_AGENT_IMAGE:-podckpt.local/podckpt-agent:0.1.0}
here=$(cd "$(dirname "$0")" && pwd)
files=(--file "$binary=/usr/local/bin/podckpt-agent")
for lib in $(ldd "$binary" | awk '/=>/ {print $3} /ld-linux/ {print $1}' | sort -u); do
    files+=(--file "$(readlink -f "$lib")=$lib")
done
python3 "$here/build-oci.py" --out "$out" --name "$name" --entrypoint /usr/local/bin/podckpt-agent \
    "${files[@]}" --cmd
