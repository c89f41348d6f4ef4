# %postun of the airgap-snapshotter RPM ($1: 0 on erase, 1 on upgrade):
# systemd rereads its units; an upgrade restarts a running daemon on the new
# binary. /etc/airgap-snapshotter/config.toml is %config(noreplace): an
# upgrade keeps a site's copy (the new default lands as config.toml.rpmnew),
# an erase removes it unless it was changed (then kept as
# config.toml.rpmsave). Nothing else is deleted: not the archives, not the
# daemon's state under /var/lib/airgap-snapshotter, not containerd's config
# (docs/operations.md, "Uninstall"). Written by hand, see post.sh.
unit=airgap-snapshotter.service

if [ "$1" -eq 0 ]; then
    # The directories the package's files were in, when nothing else is
    # there (a kept config.toml.rpmsave keeps /etc/airgap-snapshotter).
    rmdir /etc/airgap-snapshotter /usr/share/licenses/airgap-snapshotter 2>/dev/null || true
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    if [ "$1" -ge 1 ]; then
        systemctl try-restart "$unit" >/dev/null 2>&1 || true
    fi
fi
exit 0
