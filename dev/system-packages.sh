#!/usr/bin/env bash
# The Debian packages a make target needs that pip cannot install. As root (CI, a fresh VM) this
# installs them with apt-get; otherwise it prints the exact command (and, for the venv, stops).
#   bash dev/system-packages.sh venv PYTHON   python3-venv, where PYTHON lacks venv/ensurepip (make install)
#   bash dev/system-packages.sh test          what `make test` needs beside the venv
# The demo and the test speech need none: libespeak-ng comes from PyPI (espeakng-loader).
set -euo pipefail
usage="usage: bash dev/system-packages.sh venv PYTHON | test"
what=${1:-}
need=()
case $what in
venv)
    "${2:-python3}" -c 'import ensurepip, venv' 2>/dev/null || need+=(python3-venv)
    ;;
test)
    # ffmpeg: runner/audio.py's fallback for formats libsndfile cannot read, and its test.
    # docker.io: the real Docker engine the docker backend's tests start (tests/support/docker_engine.py);
    # debootstrap: the Debian base image they build from (no image registry is reachable).
    # openssh-server: the real sshd that stands in for a rented GPU host (tests/support/ssh_server.py);
    # openssh-client: ssh, which `gpujob host ssh` runs.
    # chromium: the headless browser the dashboard's tests drive with Playwright (tests/support/browser.py).
    command -v ffmpeg >/dev/null || need+=(ffmpeg)
    command -v dockerd >/dev/null || need+=(docker.io)
    command -v debootstrap >/dev/null || need+=(debootstrap)
    [ -x /usr/sbin/sshd ] || need+=(openssh-server)
    command -v ssh >/dev/null || need+=(openssh-client)
    command -v chromium >/dev/null || need+=(chromium)
    ;;
*)
    echo "$usage" >&2
    exit 2
    ;;
esac
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}"
    exit 0
fi
install="sudo apt-get install -y --no-install-recommends ${need[*]}"
if [ "$what" = venv ]; then
    echo "error: ${2:-python3} has no venv module; install it with: $install" >&2
    exit 1
fi
echo "note: the tests that need ${need[*]} will be skipped; to run them, first: $install" >&2
