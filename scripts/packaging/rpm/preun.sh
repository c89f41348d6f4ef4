# %preun of the airgap-snapshotter RPM ($1: 0 on erase, 1 on upgrade): on
# erase the daemon is stopped where systemd runs it and the unit disabled.
# Written by hand, see post.sh.
unit=airgap-snapshotter.service
link=/etc/systemd/system/multi-user.target.wants/$unit

if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ]; then
        systemctl stop "$unit" >/dev/null 2>&1 || true
    fi
    if command -v systemctl >/dev/null 2>&1; then
        systemctl --no-reload disable "$unit" >/dev/null 2>&1 || true
    elif [ -L "$link" ]; then
        rm -f "$link"
        rmdir "${link%/*}" 2>/dev/null || true
    fi
fi
exit 0
