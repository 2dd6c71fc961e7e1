#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine (run as root or with sudo).
# torch is pinned: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need_apt=()
command -v ffmpeg >/dev/null || need_apt+=(ffmpeg)
command -v ffprobe >/dev/null || need_apt+=(ffmpeg)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need_apt[@]}"
fi

python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[dev]"

# The non-Python mask-stream client used by the tests (versions pinned by its package-lock.json).
if [ -f tools/clients/node/package-lock.json ]; then
  (cd tools/clients/node && npm ci --no-audit --no-fund --loglevel=error)
fi
