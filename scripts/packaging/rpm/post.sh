# %post of the airgap-snapshotter RPM ($1: 1 on install, 2 on upgrade).
#
# Written by hand rather than with the %systemd_post / %systemd_preun /
# %systemd_postun_with_restart macros: cargo-generate-rpm writes the RPM
# without rpmbuild, so no macro is expanded. These scriptlets do what the
# macros expand to, with the .deb's behaviour (scripts/packaging/deb):
# enabled on install (not left to the preset policy, which disables new
# services on Fedora and RHEL), started only where systemd runs the system,
# never an error in a chroot or an `rpm --root` install without systemd.
unit=airgap-snapshotter.service
# The unit's [Install] section: WantedBy=multi-user.target.
link=/etc/systemd/system/multi-user.target.wants/$unit

# The archives directory (the daemon's state directory beside it is made
# by the daemon, mode 0700). Not owned by the package: an erase never
# touches the archives a site put there.
mkdir -p /var/lib/airgap-snapshotter/archives

if [ "$1" -eq 1 ]; then
    if command -v systemctl >/dev/null 2>&1; then
        systemctl --no-reload enable "$unit" >/dev/null 2>&1 || true
    else
        # What `systemctl enable` does, in a root without systemd.
        mkdir -p "${link%/*}"
        ln -sfn "/usr/lib/systemd/system/$unit" "$link"
    fi
fi
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
    if [ "$1" -eq 1 ]; then
        systemctl start "$unit" >/dev/null 2>&1 || true
    fi
fi
exit 0
