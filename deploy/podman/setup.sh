#!/usr/bin/env bash
# Build and run this project's Docker image without a Docker engine or a registry:
# Debian's podman, a private storage under $WEBAPP_PODMAN_DIR, and a local stand-in
# for the `python:3.11-slim` base image (Debian bookworm's Python 3.11).
# Idempotent: every step runs only when its result is missing. Needs root (apt, chroot).
#
#   deploy/podman/setup.sh
#   . /tmp/webapp-podman/env          # CONTAINERS_CONF, CONTAINERS_STORAGE_CONF
#   podman build --pull=never --network host --format docker --target slim -t webapp:slim .
#   podman run -d --network host -e PORT=5000 webapp:slim
#
# tests/test_container.py runs it before building both targets.
set -euo pipefail

DIR=${WEBAPP_PODMAN_DIR:-/tmp/webapp-podman}
BASE=localhost/python:3.11-slim
ROOTFS_TAR=$DIR/python-3.11-slim-rootfs.tar  # cached: re-imported if the storage was wiped
mkdir -p "$DIR"
exec 9>"$DIR/lock"  # two test sessions at once: the second waits for the first
flock 9

# 1. Packages. runc, not crun: crun fails on this kernel's hybrid cgroups.
if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=600 update
  apt-get -o DPkg::Lock::Timeout=600 install -y --no-install-recommends \
    podman runc conmon debootstrap golang-github-containers-common ca-certificates
fi

# 2. Configuration: runc with cgroupfs (no systemd here), limits root may not
#    raise capped, and a storage of our own (native overlay works on this kernel).
cat >"$DIR/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
cat >"$DIR/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$DIR/storage"
runroot = "$DIR/run"
EOF
cat >"$DIR/env" <<EOF
export CONTAINERS_CONF=$DIR/containers.conf
export CONTAINERS_STORAGE_CONF=$DIR/storage.conf
EOF
# shellcheck source=/dev/null
. "$DIR/env"

# 3. The stand-in base image.
if podman image exists "$BASE"; then
  exit 0
fi
if [ ! -s "$ROOTFS_TAR" ]; then
  root=$(mktemp -d "$DIR/rootfs.XXXXXX")
  # Never follow a still-mounted /proc when cleaning up.
  trap 'umount "$root/proc" 2>/dev/null || true; rm -rf --one-file-system "$root"' EXIT
  debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian
  # The machine's CA certificates: pip inside a build goes through its TLS proxy.
  mkdir -p "$root/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
  mount -t proc proc "$root/proc"
  chroot "$root" sh -euc '
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends python3 python3-venv python3-pip ca-certificates
    update-ca-certificates
    apt-get clean
    rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED
    ln -sf /usr/bin/python3 /usr/local/bin/python
    ln -sf /usr/bin/pip3 /usr/local/bin/pip'
  umount "$root/proc"
  tar -C "$root" -cf "$ROOTFS_TAR.partial" .
  mv "$ROOTFS_TAR.partial" "$ROOTFS_TAR"
fi
bundle=/etc/ssl/certs/ca-certificates.crt
podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "ENV PIP_CERT=$bundle" \
  --change "ENV REQUESTS_CA_BUNDLE=$bundle" \
  --change "ENV SSL_CERT_FILE=$bundle" \
  --change 'CMD ["python3"]' \
  "$ROOTFS_TAR" "$BASE"
podman tag "$BASE" docker.io/library/python:3.11-slim
