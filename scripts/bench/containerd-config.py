#!/usr/bin/env python3
"""Writes a private containerd 1.6 config for scripts/bench.sh and asserts
that it never points at the system containerd.

    containerd-config.py DIR SNAPSHOTTER_SOCKET CRI_SNAPSHOTTER HOSTS_DIR > DIR/config.toml

Reads `containerd config default` on stdin. root, state, the gRPC and ttrpc
sockets, the opt and CNI directories all go under DIR; the airgap proxy
snapshotter is added at SNAPSHOTTER_SOCKET; CRI unpacks with CRI_SNAPSHOTTER
(`overlayfs`: containerd as sites run it today, `airgap`: this project) and
reads registry hosts from HOSTS_DIR. Same rewriting as
integration/src/containerd.rs, for a bash script.
"""
import sys
import tomllib

SYSTEM = ["/var/lib/containerd", "/run/containerd/containerd.sock"]


def main():
    d, sock, cri_snapshotter, hosts = sys.argv[1:5]
    default = sys.stdin.read()
    q = lambda s: '"' + s + '"'
    replace = {
        ("", "root"): q(f"{d}/root"),
        ("", "state"): q(f"{d}/state"),
        ("[grpc]", "address"): q(f"{d}/containerd.sock"),
        ("[ttrpc]", "address"): q(f"{d}/containerd.sock.ttrpc"),
        ('[plugins."io.containerd.internal.v1.opt"]', "path"): q(f"{d}/opt"),
        ('[plugins."io.containerd.grpc.v1.cri".cni]', "conf_dir"): q(f"{d}/cni"),
        ('[plugins."io.containerd.grpc.v1.cri".containerd]', "snapshotter"): q(cri_snapshotter),
        ('[plugins."io.containerd.grpc.v1.cri".containerd]', "disable_snapshot_annotations"): "false",
        ('[plugins."io.containerd.grpc.v1.cri".registry]', "config_path"): q(hosts),
    }
    out, section, seen_proxy = [], "", False
    for line in default.splitlines():
        t = line.strip()
        if t.startswith("["):
            section = t
            seen_proxy |= t == "[proxy_plugins]"
        key = t.split("=")[0].strip()
        indent = line[: len(line) - len(line.lstrip())]
        value = replace.get((section, key))
        out.append(f"{indent}{key} = {value}" if value is not None and "=" in t else line)
    if not seen_proxy:
        sys.exit("containerd's default config has no [proxy_plugins] table")
    out += ["", "[proxy_plugins.airgap]", '  type = "snapshot"', f"  address = {q(sock)}", ""]
    text = "\n".join(out)

    cfg = tomllib.loads(text)
    cri = cfg["plugins"]["io.containerd.grpc.v1.cri"]
    checks = {
        "root": (cfg.get("root"), f"{d}/root"),
        "state": (cfg.get("state"), f"{d}/state"),
        "grpc.address": (cfg.get("grpc", {}).get("address"), f"{d}/containerd.sock"),
        "ttrpc.address": (cfg.get("ttrpc", {}).get("address"), f"{d}/containerd.sock.ttrpc"),
        "cri snapshotter": (cri["containerd"]["snapshotter"], cri_snapshotter),
        "cri registry config_path": (cri["registry"]["config_path"], hosts),
        "proxy_plugins.airgap.address": (cfg["proxy_plugins"]["airgap"]["address"], sock),
    }
    for what, (got, want) in checks.items():
        if got != want:
            sys.exit(f"generated containerd config: {what} is {got!r}, expected {want!r}")
    for s in SYSTEM:
        if s in text:
            sys.exit(f"generated containerd config still mentions {s}")
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
