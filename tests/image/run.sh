#!/usr/bin/env bash
# `make test-image`: build the container image and run the container tests (tests/image, marker
# "image") with podman. Installs podman, buildah, debootstrap and runc with apt when they are
# missing, keeps all container state under .cache/image (its own storage.conf and containers.conf:
# runc, cgroupfs, vfs; nothing in /etc/containers is changed), builds a Debian bookworm base image
# with debootstrap (no registry is needed), builds the Dockerfile on it with buildah, then runs
# pytest. Where podman cannot run containers at all it says so loudly and exits 0; a failure after
# that (build, tests) fails the target.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK="${IMAGE_TEST_WORK:-$ROOT/.cache/image}"
PY="${PY:-$ROOT/.venv/bin/python}"
BASE_IMAGE=localhost/trackrelay-base:bookworm
IMAGE=localhost/trackrelay:test
APP_IMAGE=localhost/trackrelay-testapp:test
export DEBIAN_FRONTEND=noninteractive

skip() {
  {
    echo
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo "!!! test-image SKIPPED: the container image tests did NOT run."
    echo "!!! reason: $1"
    [ -n "${2:-}" ] && sed 's/^/!!!   /' <<<"$2" | tail -n 20
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
    echo
  } >&2
  exit 0
}
# an interrupted debootstrap leaves /proc and /sys mounted inside the rootfs
clean_rootfs() {
  findmnt -rn -o TARGET | grep -F "$WORK/rootfs/" | sort -r | xargs -r -n1 umount -l || true
  rm -rf --one-file-system "$WORK/rootfs"
}
step() { echo "test-image: $* ($(date -u +%H:%M:%S))"; }

[ "$(id -u)" = 0 ] || skip "needs root (rootful podman with its own storage); run as root or in CI"

missing=()
for tool in podman:podman buildah:buildah debootstrap:debootstrap runc:runc slirp4netns:slirp4netns \
            catatonit:/usr/libexec/podman/catatonit netavark:/usr/lib/podman/netavark \
            aardvark-dns:/usr/lib/podman/aardvark-dns iptables:iptables; do
  pkg=${tool%%:*} bin=${tool#*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "$bin" ] || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || skip "podman/buildah/debootstrap/runc are missing and there is no apt-get to install them"
  step "apt-get install ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}" \
    || skip "apt-get could not install ${missing[*]}"
fi

# one run at a time on this state (a second one would debootstrap into the same directory)
mkdir -p "$WORK"
exec 9>"$WORK.lock"
flock -n 9 || { echo "test-image: another run holds $WORK.lock; waiting" >&2; flock 9; }

# Container state of our own: vfs storage (no overlay in this VM), runc with cgroupfs (crun fails
# here), file event log (no journald), explicit ulimits.
mkdir -p "$WORK/conf" "$WORK/storage" "$WORK/run" "$WORK/tmp" "$WORK/networks"
cat > "$WORK/conf/storage.conf" <<CONF
[storage]
driver = "vfs"
graphroot = "$WORK/storage"
runroot = "$WORK/run"
CONF
cat > "$WORK/conf/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$WORK/run/events.log"
tmp_dir = "$WORK/tmp"
[network]
network_backend = "netavark"
network_config_dir = "$WORK/networks"
CONF
export CONTAINERS_STORAGE_CONF="$WORK/conf/storage.conf" CONTAINERS_CONF="$WORK/conf/containers.conf"
export TMPDIR="$WORK/tmp"

if ! podman image exists "$BASE_IMAGE"; then
  # the Debian mirror apt uses here
  mirror=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
           | grep -oE 'https?://[^ ]+' | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  step "debootstrap bookworm from $mirror"
  clean_rootfs
  # a failure here fails the target: podman may well work, the base image did not build
  debootstrap --variant=minbase --include=python3-minimal,python3,ca-certificates \
    bookworm "$WORK/rootfs" "$mirror" > "$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log" >&2; echo "test-image: debootstrap failed" >&2; exit 1; }
  rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
  tar -C "$WORK/rootfs" --numeric-owner -c . \
    | podman import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  clean_rootfs
fi

step "podman can run a container?"
if ! out=$(podman run --rm --network none "$BASE_IMAGE" python3 -c 'print("container ok")' 2>&1); then
  skip "podman cannot run a container on this machine" "$out"
fi

# pip in the build stage trusts what this machine's pip trusts (a TLS-intercepting proxy's CA)
ca_bundle=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
ca_args=()
[ -r "$ca_bundle" ] && ca_args=(-v "$ca_bundle:/run/build-ca.crt:ro" --build-arg BUILD_CA_BUNDLE=/run/build-ca.crt)
step "buildah bud $IMAGE"
buildah bud --isolation chroot --format docker --layers=false --build-arg BASE="$BASE_IMAGE" "${ca_args[@]}" \
  -t "$IMAGE" -f Dockerfile .
step "buildah bud $APP_IMAGE"
buildah bud --isolation chroot --format docker --build-arg BASE="$BASE_IMAGE" \
  -t "$APP_IMAGE" -f tests/image/app/Dockerfile tests/image/app
podman image prune -f >/dev/null 2>&1 || true
podman images

step "pytest -m image tests/image"
export TRACKRELAY_IMAGE="$IMAGE" TRACKRELAY_APP_IMAGE="$APP_IMAGE"
exec "$PY" -m pytest -q -s -ra -m image -p no:cacheprovider tests/image "$@"
