#!/usr/bin/env python3
"""Daemon start-up timing for scripts/bench.sh.

    startup.py BIN ARCHIVES_DIR ROOT MIRROR_ADDR IMAGE_PATH [--idle SECONDS]

Starts `BIN serve` on ARCHIVES_DIR with ROOT (its socket is ROOT.sock, its log
ROOT.log) and prints one line: milliseconds from exec until the snapshotter
socket accepts a connection, milliseconds until the mirror answers 200 to a
HEAD of IMAGE_PATH's manifest (`/v2/<name>/manifests/<tag>?ns=docker.io`:
the index is loaded and serving), then, after SECONDS idle (default 1), the
daemon's VmRSS and VmHWM in KiB. Stops the daemon (SIGTERM, by pid) before
it exits, also on failure.
"""
import http.client
import os
import signal
import socket
import subprocess
import sys
import time


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def main():
    args = sys.argv[1:]
    idle = 1.0
    if "--idle" in args:
        i = args.index("--idle")
        idle = float(args[i + 1])
        del args[i : i + 2]
    binary, archives, root, mirror, image_path = args
    sock = root + ".sock"
    host, port = mirror.rsplit(":", 1)
    try:
        os.unlink(sock)
    except FileNotFoundError:
        pass
    env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
    with open(root + ".log", "ab") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen([binary, "serve", "--root", root, "--socket", sock, "--archives", archives,
                                 "--mirror-listen", mirror, "--metrics-listen", "off", "--import-mode", "off"], stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = t0 + 600
        socket_ms = None
        while socket_ms is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the daemon did not listen; see {root}.log")
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(sock)
                socket_ms = (time.monotonic() - t0) * 1000
            except OSError:
                time.sleep(0.002)
            finally:
                s.close()
        serving_ms = None
        while serving_ms is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"the daemon did not serve {image_path}; see {root}.log")
            try:
                c = http.client.HTTPConnection(host, int(port), timeout=5)
                c.request("HEAD", image_path, headers={"Accept": "application/vnd.oci.image.manifest.v1+json, "
                                                                 "application/vnd.docker.distribution.manifest.v2+json"})
                if c.getresponse().status == 200:
                    serving_ms = (time.monotonic() - t0) * 1000
                c.close()
            except OSError:
                pass
            if serving_ms is None:
                time.sleep(0.002)
        time.sleep(idle)
        print(f"{socket_ms:.0f} {serving_ms:.0f} {status_kib(proc.pid, 'VmRSS')} {status_kib(proc.pid, 'VmHWM')}")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
