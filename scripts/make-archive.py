#!/usr/bin/env python3
"""Builds an OCI image layout archive from directories on this machine.

    make-archive.py --out FILE --name REF [--layer DIR | --layer-tree ROOT=PATH[,PATH...]]...
                    [--name REF --layer ...]... [--layer-compression gzip|zstd|none]
                    [--wrap tar|gzip|zstd] [--docker-save-out FILE]

Each --name starts an image; the --layer directories after it are its layers,
bottom first. `--layer-tree /=usr/lib/go-1.19,usr/share/go-1.19` makes a layer of
those paths under ROOT, keeping the paths (with their parent directories).
A layer given twice (a shared base) is built once and stored once. Layers are
written the way `ctr export` writes them (gzip by default) and the whole
layout is wrapped like `ctr export | zstd` when --wrap zstd is given. Blobs
are stored in the order the images and layers are given.

--docker-save-out FILE also writes the same images as `docker save` (before
Docker 25) does: `manifest.json`, `repositories`, `<id>/layer.tar`
uncompressed, wrapped with --wrap too (k3s ships its images as such a
`.tar.zst`). Uses tar, pigz and zstd from the system; no network.
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


def tar_args(src):
    """What tar is given for a layer source: `-C DIR .`, or for a tree
    `ROOT=PATH,...`, its parent directories (not recursed) and the paths."""
    if "=" not in src:
        return ["-C", src, "."]
    root, paths = src.split("=", 1)
    paths = [p.strip("/") for p in paths.split(",") if p.strip("/")]
    parents = sorted({"/".join(p.split("/")[:i]) for p in paths for i in range(1, p.count("/") + 1)})
    return ["-C", root, "--no-recursion", *parents, "--recursion", *paths]


def build_layer(src, tmp, compression, keep_raw=None):
    raw = os.path.join(tmp, "layer.tar")
    subprocess.run(["tar", "--sort=name", "--numeric-owner", "--owner=0", "--group=0",
                    "--mtime=@1700000000", "-cf", raw, *tar_args(src)], check=True)
    diff_id = sha256_file(raw)
    if keep_raw is not None:
        os.link(raw, keep_raw)
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
    p.add_argument("--docker-save-out")
    p.add_argument("--arch", default={"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine))
    images, current = [], None
    args, rest = p.parse_known_args()
    it = iter(rest)
    for a in it:
        if a == "--name":
            current = {"name": next(it), "layers": []}
            images.append(current)
        elif a in ("--layer", "--layer-tree"):
            if current is None:
                sys.exit(f"{a} before any --name")
            current["layers"].append(next(it))
        else:
            sys.exit(f"unknown argument {a}")
    if not images:
        sys.exit("give at least one --name REF --layer DIR")

    with tempfile.TemporaryDirectory(prefix="make-archive-") as tmp:
        layout = os.path.join(tmp, "layout")
        blobs = os.path.join(layout, "blobs", "sha256")
        os.makedirs(blobs)
        docker = os.path.join(tmp, "docker")
        order = []  # blob paths relative to the layout, in the order they came
        docker_order, docker_manifest, built = [], [], {}
        index = []
        for img in images:
            descs, diff_ids = [], []
            for src in img["layers"]:
                if src not in built:
                    keep = None
                    if args.docker_save_out:
                        os.makedirs(docker, exist_ok=True)
                        keep = os.path.join(docker, "pending.tar")
                    path, diff_id, media = build_layer(src, tmp, args.layer_compression, keep)
                    digest, size = add_blob(blobs, path=path)
                    order.append(f"blobs/sha256/{digest}")
                    if keep is not None:
                        os.makedirs(os.path.join(docker, diff_id))
                        os.rename(keep, os.path.join(docker, diff_id, "layer.tar"))
                        with open(os.path.join(docker, diff_id, "VERSION"), "w") as f:
                            f.write("1.0")
                        with open(os.path.join(docker, diff_id, "json"), "w") as f:
                            json.dump({"id": diff_id}, f)
                        docker_order.append(diff_id)
                    built[src] = ({"mediaType": media, "digest": "sha256:" + digest, "size": size},
                                  "sha256:" + diff_id)
                desc, diff_id = built[src]
                descs.append(desc)
                diff_ids.append(diff_id)
            config = json.dumps({"architecture": args.arch, "os": "linux",
                                 "config": {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["/bin/sh"]},
                                 "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()
            cd, cs = add_blob(blobs, data=config)
            order.append(f"blobs/sha256/{cd}")
            if args.docker_save_out:
                with open(os.path.join(docker, cd + ".json"), "wb") as f:
                    f.write(config)
                repo_tag = img["name"].removeprefix("docker.io/")
                docker_manifest.append({"Config": cd + ".json", "RepoTags": [repo_tag],
                                        "Layers": [d.removeprefix("sha256:") + "/layer.tar" for d in diff_ids]})
            manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                                   "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                              "digest": "sha256:" + cd, "size": cs},
                                   "layers": descs}).encode()
            md, ms = add_blob(blobs, data=manifest)
            order.append(f"blobs/sha256/{md}")
            tag = img["name"].rsplit(":", 1)[-1]
            index.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + md,
                          "size": ms, "annotations": {"io.containerd.image.name": img["name"],
                                                      "org.opencontainers.image.ref.name": tag}})
        with open(os.path.join(layout, "oci-layout"), "w") as f:
            f.write('{"imageLayoutVersion":"1.0.0"}')
        with open(os.path.join(layout, "index.json"), "w") as f:
            json.dump({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                       "manifests": index}, f)
        # Documents first, as `ctr export` does, then blobs in the order they
        # came (a small image given last is at the end of the stream).
        order = list(dict.fromkeys(order))
        write_tar(layout, ["oci-layout", "index.json", "blobs", "blobs/sha256", *order], args.out, args.wrap)
        if args.docker_save_out:
            repositories = {}
            for m in docker_manifest:
                name, tag = m["RepoTags"][0].rsplit(":", 1)
                repositories.setdefault(name, {})[tag] = m["Layers"][-1].split("/")[0]
            with open(os.path.join(docker, "manifest.json"), "w") as f:
                json.dump(docker_manifest, f)
            with open(os.path.join(docker, "repositories"), "w") as f:
                json.dump(repositories, f)
            members = ["manifest.json", "repositories"] + [m["Config"] for m in docker_manifest]
            for d in docker_order:
                members += [d, f"{d}/VERSION", f"{d}/json", f"{d}/layer.tar"]
            write_tar(docker, list(dict.fromkeys(members)), args.docker_save_out, args.wrap)


def write_tar(base, members, out_path, wrap):
    """Writes `members` of `base`, in this order and not recursed, as a tar
    wrapped by `wrap`."""
    tar = ["tar", "-C", base, "--numeric-owner", "--owner=0", "--group=0", "--no-recursion", "-cf", "-", *members]
    with open(out_path, "wb") as out:
        if wrap == "tar":
            subprocess.run(tar, stdout=out, check=True)
        else:
            comp = ["pigz", "-c"] if wrap == "gzip" else ["zstd", "-q", "-T0", "-c"]
            t = subprocess.Popen(tar, stdout=subprocess.PIPE)
            subprocess.run(comp, stdin=t.stdout, stdout=out, check=True)
            if t.wait() != 0:
                sys.exit("tar failed")


if __name__ == "__main__":
    main()
