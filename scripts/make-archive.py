#!/usr/bin/env python3
"""Builds an OCI image layout archive from directories on this machine.

    make-archive.py --out FILE --name REF [--layer DIR]... [--image REF --layer DIR...]...
                    [--layer-compression gzip|zstd|none] [--wrap tar|gzip|zstd]

Each --name starts an image; the --layer directories after it are its layers,
bottom first. Layers are written the way `ctr export` writes them (gzip by
default) and the whole layout is wrapped like `ctr export | zstd` when
--wrap zstd is given. Uses tar, pigz and zstd from the system; no network.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def add_blob(blobs_dir, data=None, path=None):
    if path is None:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs_dir, digest), "wb") as f:
            f.write(data)
        return digest, len(data)
    digest = sha256_file(path)
    dest = os.path.join(blobs_dir, digest)
    shutil.move(path, dest)
    return digest, os.path.getsize(dest)


def build_layer(src, tmp, compression):
    raw = os.path.join(tmp, "layer.tar")
    subprocess.run(["tar", "-C", src, "--sort=name", "--numeric-owner", "--owner=0", "--group=0",
                    "--mtime=@1700000000", "-cf", raw, "."], check=True)
    diff_id = sha256_file(raw)
    if compression == "gzip":
        subprocess.run(["pigz", "-6", raw], check=True)
        raw += ".gz"
        media = "application/vnd.oci.image.layer.v1.tar+gzip"
    elif compression == "zstd":
        subprocess.run(["zstd", "-q", "-T0", "--rm", raw], check=True)
        raw += ".zst"
        media = "application/vnd.oci.image.layer.v1.tar+zstd"
    else:
        media = "application/vnd.oci.image.layer.v1.tar"
    return raw, diff_id, media


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--out", required=True)
    p.add_argument("--layer-compression", default="gzip", choices=["gzip", "zstd", "none"])
    p.add_argument("--wrap", default="tar", choices=["tar", "gzip", "zstd"])
    p.add_argument("--arch", default={"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine))
    images, current = [], None
    args, rest = p.parse_known_args()
    it = iter(rest)
    for a in it:
        if a == "--name":
            current = {"name": next(it), "layers": []}
            images.append(current)
        elif a == "--layer":
            if current is None:
                sys.exit("--layer before any --name")
            current["layers"].append(next(it))
        else:
            sys.exit(f"unknown argument {a}")
    if not images:
        sys.exit("give at least one --name REF --layer DIR")

    with tempfile.TemporaryDirectory(prefix="make-archive-") as tmp:
        layout = os.path.join(tmp, "layout")
        blobs = os.path.join(layout, "blobs", "sha256")
        os.makedirs(blobs)
        index = []
        for img in images:
            descs, diff_ids = [], []
            for src in img["layers"]:
                path, diff_id, media = build_layer(src, tmp, args.layer_compression)
                digest, size = add_blob(blobs, path=path)
                descs.append({"mediaType": media, "digest": "sha256:" + digest, "size": size})
                diff_ids.append("sha256:" + diff_id)
            config = json.dumps({"architecture": args.arch, "os": "linux",
                                 "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"]},
                                 "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
            cd, cs = add_blob(blobs, data=config)
            manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                   "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                              "digest": "sha256:" + cd, "size": cs},
                                   "layers": descs}).encode()
            md, ms = add_blob(blobs, data=manifest)
            tag = img["name"].rsplit(":", 1)[-1]
            index.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + md,
                          "size": ms, "annotations": {"io.containerd.image.name": img["name"],
                                                      "org.opencontainers.image.ref.name": tag}})
        with open(os.path.join(layout, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        with open(os.path.join(layout, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": index}, f)
        tar = ["tar", "-C", layout, "--numeric-owner", "--owner=0", "--group=0", "-cf", "-", "oci-layout", "index.json", "blobs"]
        with open(args.out, "wb") as out:
            if args.wrap == "tar":
                subprocess.run(tar, stdout=out, check=True)
            else:
                comp = ["pigz", "-c"] if args.wrap == "gzip" else ["zstd", "-q", "-T0", "-c"]
                t = subprocess.Popen(tar, stdout=subprocess.PIPE)
                subprocess.run(comp, stdin=t.stdout, stdout=out, check=True)
                if t.wait() != 0:
                    sys.exit("tar failed")


if __name__ == "__main__":
    main()
