"""Builds a container image without a registry or a container builder: an OCI
image layout (oci-layout, index.json, a manifest, a config and one
uncompressed tar layer) written with tarfile and hashlib, and imported into
containerd with `ctr -n k8s.io images import`, for the real node of
hack/cluster.sh and its e2e.

    oci_image.py --name NAME --out FILE.tar [--file SRC:DEST[:MODE]]...
                 [--binary PATH:DEST]... [--link TARGET:DEST]...
                 [--entrypoint ARG]... [--cmd ARG]... [--user UID:GID]
                 [--env K=V]... [--import CONTAINERD_SOCKET]

--binary copies a dynamically linked program and every library `ldd` names
(with the loader), so a program built on this machine runs in the image as it
does here. The layer is reproducible: sorted, owned by 0:0, mtime 0.
"""
import argparse
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def shared_libraries(binary):
    """The absolute paths of the libraries `ldd` says `binary` loads, loader included."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    if out.returncode != 0:
        return []  # a static program
    libs = []
    for line in out.stdout.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


class Layer:
    """The files of one tar layer, in memory: DEST -> (bytes, mode) or a symlink."""

    def __init__(self):
        self.entries = {}

    def add_file(self, src, dest, mode=None):
        with open(src, "rb") as f:
            data = f.read()
        self.entries[dest.lstrip("/")] = ("file", data, mode if mode is not None else os.stat(src).st_mode & 0o777)

    def add_link(self, target, dest):
        self.entries[dest.lstrip("/")] = ("link", target, 0o777)

    def add_binary(self, src, dest):
        self.add_file(src, dest)
        for lib in shared_libraries(src):
            self.add_file(os.path.realpath(lib), lib)

    def tar(self):
        dirs = set()
        for path in self.entries:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add("/".join(parts[:i]))
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for d in sorted(dirs):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            for path in sorted(self.entries):
                kind, payload, mode = self.entries[path]
                info = tarfile.TarInfo(path)
                info.mode = mode
                if kind == "link":
                    info.type, info.linkname = tarfile.SYMTYPE, payload
                    tar.addfile(info)
                else:
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        return buf.getvalue()


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def image_archive(name, layer_tar, entrypoint, cmd, user, env):
    """The bytes of an OCI layout tar holding one image named `name`."""
    layer_digest, _ = blob(layer_tar)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": entrypoint or None, "Cmd": cmd or None, "User": user or "",
                   "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"] + env},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_bytes = blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer_tar)}],
    }
    manifest_digest, manifest_bytes = blob(json.dumps(manifest, sort_keys=True).encode())
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest_bytes),
                       "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}}],
    }
    files = {
        "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
        "index.json": json.dumps(index, sort_keys=True).encode(),
    }
    for digest, data in ((layer_digest, layer_tar), (config_digest, config_bytes), (manifest_digest, manifest_bytes)):
        files["blobs/sha256/" + digest.split(":")[1]] = data
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path in sorted(files):
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(files[path]), 0o644
            tar.addfile(info, io.BytesIO(files[path]))
    return buf.getvalue()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True, help="the image's full name, e.g. kube-gpu-metrics.local/pause:3.2")
    p.add_argument("--out", required=True, help="where to write the OCI layout archive")
    p.add_argument("--file", action="append", default=[], help="SRC:DEST[:MODE, octal]")
    p.add_argument("--binary", action="append", default=[], help="PATH:DEST, with the libraries it loads")
    p.add_argument("--link", action="append", default=[], help="TARGET:DEST, a symlink")
    p.add_argument("--entrypoint", action="append", default=[])
    p.add_argument("--cmd", action="append", default=[])
    p.add_argument("--user", default="")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--import", dest="containerd", help="containerd's socket: import the archive into namespace k8s.io")
    args = p.parse_args()

    layer = Layer()
    for spec in args.file:
        parts = spec.split(":")
        if len(parts) not in (2, 3):
            sys.exit(f"--file {spec}: expected SRC:DEST[:MODE]")
        layer.add_file(parts[0], parts[1], int(parts[2], 8) if len(parts) == 3 else None)
    for spec in args.binary:
        src, _, dest = spec.partition(":")
        if not dest:
            sys.exit(f"--binary {spec}: expected PATH:DEST")
        layer.add_binary(src, dest)
    for spec in args.link:
        target, _, dest = spec.partition(":")
        if not dest:
            sys.exit(f"--link {spec}: expected TARGET:DEST")
        layer.add_link(target, dest)

    archive = image_archive(args.name, layer.tar(), args.entrypoint, args.cmd, args.user, args.env)
    with open(args.out + ".tmp", "wb") as f:
        f.write(archive)
    os.replace(args.out + ".tmp", args.out)
    if args.containerd:
        subprocess.run(["ctr", "--address", args.containerd, "-n", "k8s.io", "images", "import",
                        args.out], check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
