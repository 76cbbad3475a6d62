"""Times Version calls made with grpcio against two sockets, alternating.

    python grpcio_latency.py DIRECT_SOCKET SHIM_SOCKET ROUNDS CALLS

Each round makes CALLS sequential calls on each side in turn, each side on
one channel: containerd directly and podckptd with grpcio's default options
(so it sends the socket path as :authority, which podckptd rewrites), and
podckptd again with the authority set to "localhost" (which it passes as
it is): the last two differ only by the rewrite. Prints one JSON object:
per side, the p50 and p99 latency in microseconds over every call.
"""

import json
import sys
import time

import grpc

METHOD = "/runtime.v1.RuntimeService/Version"


def percentile(sorted_samples, p):
    return sorted_samples[round((len(sorted_samples) - 1) * p)]


def main():
    direct, shim, rounds, calls = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    sides = {
        "direct": (direct, []),
        "shim": (shim, []),
        "shim_localhost": (shim, [("grpc.default_authority", "localhost")]),
    }
    stubs = {
        name: grpc.insecure_channel("unix://" + path, options=options).unary_unary(METHOD)
        for name, (path, options) in sides.items()
    }
    samples = {name: [] for name in sides}
    for _ in range(rounds):
        for name, call in stubs.items():
            call(b"", timeout=10)  # warm the channel for this round
            for _ in range(calls):
                started = time.perf_counter_ns()
                call(b"", timeout=10)
                samples[name].append((time.perf_counter_ns() - started) / 1000)
    report = {}
    for name, values in samples.items():
        values.sort()
        report[name] = {"p50_us": percentile(values, 0.5), "p99_us": percentile(values, 0.99)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
