#!/usr/bin/env python3
"""Builds a one-layer OCI image archive around a static busybox.

No registry is reachable on our nodes, so the test images are made here and
loaded with `ctr images import`. The output is reproducible: fixed mtimes,
owners and entry order, so the same busybox gives the same digest.
"""
import argparse
import hashlib
import io
import json
import os
import tarfile

APPLETS = ["sh", "sleep", "cat", "echo", "head", "ls", "seq", "dd", "mkdir",
           "rm", "true", "false", "date", "wc", "tail", "env", "id", "hostname",
           "ip", "ps", "kill", "yes", "tr", "touch", "stat", "sha256sum", "test"]


def tar_info(name, kind, mode, size=0, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.size = size
    info.linkname = linkname
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


# A pause that ends on SIGTERM: as PID 1, a bare `sleep` would ignore it and
# StopPodSandbox would hang. CRI-O runs it by path (its `pause_command`).
PAUSE_SCRIPT = '#!/bin/sh\ntrap "exit 0" TERM INT\nwhile :; do sleep 3600 & wait $!; done\n'


def build_layer(busybox_path, pause=False, files=()):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        made = set()
        for d in ["bin", "dev", "etc", "proc", "sys", "tmp", "var", "run", "root"]:
            mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(tar_info(d + "/", tarfile.DIRTYPE, mode))
            made.add(d)
        if busybox_path:
            with open(busybox_path, "rb") as f:
                data = f.read()
            tar.addfile(tar_info("bin/busybox", tarfile.REGTYPE, 0o755, len(data)), io.BytesIO(data))
            for applet in APPLETS:
                tar.addfile(tar_info("bin/" + applet, tarfile.SYMTYPE, 0o777, linkname="busybox"))
        # Files of the host (a binary and the libraries it links), parents first.
        for source, dest in files:
            parts = dest.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in made:
                    tar.addfile(tar_info(d + "/", tarfile.DIRTYPE, 0o755))
                    made.add(d)
            with open(source, "rb") as f:
                data = f.read()
            tar.addfile(tar_info("/".join(parts), tarfile.REGTYPE, 0o755, len(data)), io.BytesIO(data))
        for name, text in [("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"),
                           ("etc/group", "root:x:0:\n")]:
            raw = text.encode()
            tar.addfile(tar_info(name, tarfile.REGTYPE, 0o644, len(raw)), io.BytesIO(raw))
        if pause:
            raw = PAUSE_SCRIPT.encode()
            tar.addfile(tar_info("pause", tarfile.REGTYPE, 0o755, len(raw)), io.BytesIO(raw))
    return buf.getvalue()


def blob(out_tar, data):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    name = "blobs/sha256/" + digest.split(":", 1)[1]
    out_tar.addfile(tar_info(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    return digest, len(data)


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--busybox", help="a static busybox to make the image's shell and tools of")
    ap.add_argument("--file", action="append", default=[], metavar="SOURCE=DEST",
                    help="a host file to put at DEST in the image (repeatable)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--name", required=True, help="image reference, e.g. podckpt.local/busybox:latest")
    ap.add_argument("--pause", action="store_true", help="add /pause, a sleep that ends on SIGTERM")
    ap.add_argument("--entrypoint", help="the image's entrypoint, which a pod's args follow")
    ap.add_argument("--cmd", nargs=argparse.REMAINDER, required=True)
    args = ap.parse_args()

    files = [tuple(spec.split("=", 1)) for spec in args.file]
    layer = build_layer(args.busybox, args.pause, files)
    tmp = args.out + ".tmp"
    with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as out:
        for d in ["blobs/", "blobs/sha256/"]:
            out.addfile(tar_info(d, tarfile.DIRTYPE, 0o755))
        layer_digest, layer_size = blob(out, layer)
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": dict({"Cmd": args.cmd, "Env": ["PATH=/bin"], "WorkingDir": "/"},
                           **({"Entrypoint": [args.entrypoint]} if args.entrypoint else {})),
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }
        config_digest, config_size = blob(out, canonical(config))
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": layer_size}],
        }
        manifest_digest, manifest_size = blob(out, canonical(manifest))
        index = {
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest, "size": manifest_size,
                "annotations": {"io.containerd.image.name": args.name,
                                "org.opencontainers.image.ref.name": args.name.rsplit(":", 1)[-1]},
            }],
        }
        for name, data in [("oci-layout", canonical({"imageLayoutVersion": "1.0.0"})),
                           ("index.json", canonical(index))]:
            out.addfile(tar_info(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    os.replace(tmp, args.out)
    print(f"{args.name} {manifest_digest} -> {args.out}")


if __name__ == "__main__":
    main()
