#!/usr/bin/env bash
# Every test, on a fresh node: set up the test bed, run the unit and
# integration tests against it, and stop it again so nothing is left behind.
set -euo pipefail
cd "$(dirname "$0")/.."
bash contrib/testbed.sh up
trap 'bash contrib/testbed.sh stop' EXIT
# The tests find the test bed's parts (containerd's socket, the interop
# clients, ...) where `testbed.sh env` says.
while IFS= read -r var; do export "$var"; done < <(bash contrib/testbed.sh env)
# The node agent's image is built from its release binary, as a user's is
# (contrib/images/build-agent-image.sh); the Kubernetes test loads it.
cargo build --release --locked --bin podckpt-agent
export PODCKPT_TEST_AGENT="$PWD/target/release/podckpt-agent"
# A failing test's message is what a CI log must keep; backtraces of every
# panic (set by some CI environments) bury it.
export RUST_BACKTRACE=0
# In this run a missing test bed is a failure, never a silent skip.
PODCKPT_REQUIRE_TESTBED=1 cargo test --locked 2>&1
