# Sourced by the scripts that start a private containerd (demo, bench):
# AIRGAP_CONTAINERD_DIR=DIR runs the containerd, ctr and shim in DIR (or
# DIR/usr/bin, as `scripts/fetch-containerd.sh` unpacks them) instead of the
# system's, by putting that directory first on PATH (containerd finds its
# shim there too). Unset: the containerd on PATH.
if [[ -n ${AIRGAP_CONTAINERD_DIR:-} ]]; then
    containerd_bin=$AIRGAP_CONTAINERD_DIR
    [[ -x $containerd_bin/usr/bin/containerd ]] && containerd_bin=$containerd_bin/usr/bin
    [[ -x $containerd_bin/containerd ]] || {
        echo "AIRGAP_CONTAINERD_DIR=$AIRGAP_CONTAINERD_DIR holds no containerd" >&2
        exit 1
    }
    export PATH=$containerd_bin:$PATH
fi
