"""A grpcio (gRPC C-core) client for podckpt's interop tests.

    python podckpt_interop.py unix:///ABS/PATH.sock

The channel keeps grpcio's default options on purpose: C-core then sends the
percent-encoded socket path as :authority, as every C-core client (Python,
Ruby, PHP, C++) of a CRI socket does. It holds that one channel for its whole
life and reads one call per line on stdin, as JSON:

    {"method": "/pkg.Service/Method", "request": "<base64>", "timeout_ms": 5000,
     "metadata": {"key": "value"}, "stream": false, "max_messages": 0}

and writes one answer per line on stdout:

    {"code": 0, "message": "", "responses": ["<base64>", ...]}

Messages are raw protobuf bytes both ways: no serializers, no schema.
"""

import base64
import json
import sys

import grpc


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: podckpt_interop.py unix:///ABS/PATH.sock")
    channel = grpc.insecure_channel(sys.argv[1])
    for line in sys.stdin:
        try:
            call = json.loads(line)
        except ValueError as error:
            sys.exit(f"podckpt_interop: bad request line: {error}")
        sys.stdout.write(json.dumps(run(channel, call)) + "\n")
        sys.stdout.flush()


def run(channel, call):
    method = call["method"]
    request = base64.b64decode(call.get("request") or "")
    timeout_ms = call.get("timeout_ms")
    kwargs = {
        # None: no deadline at all.
        "timeout": None if timeout_ms is None else timeout_ms / 1000,
        "metadata": metadata(call.get("metadata") or {}),
    }
    if call.get("stream"):
        return server_stream(channel.unary_stream(method), request, call.get("max_messages") or 0, kwargs)
    try:
        response, rpc = channel.unary_unary(method).with_call(request, **kwargs)
        return answer(rpc, [response])
    except grpc.RpcError as error:
        return answer(error, [])


def server_stream(multi_callable, request, max_messages, kwargs):
    """Reads until the stream ends, or until max_messages have come; then
    cancels, and reports the status grpcio gives the call (CANCELLED)."""
    rpc = multi_callable(request, **kwargs)
    responses = []
    try:
        for response in rpc:
            responses.append(response)
            if len(responses) == max_messages:
                rpc.cancel()
                break
    except grpc.RpcError:
        pass  # the status is read from rpc below
    return answer(rpc, responses)


def metadata(pairs):
    # grpcio wants bytes for binary ("-bin") keys and encodes them itself.
    return [(key, value.encode() if key.endswith("-bin") else value) for key, value in pairs.items()]


def answer(rpc, responses):
    return {
        "code": rpc.code().value[0],
        "message": rpc.details() or "",
        "responses": [base64.b64encode(r).decode() for r in responses],
    }


if __name__ == "__main__":
    main()
