#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian machine (run as root or with sudo), and nothing
# else. What each system package is for:
#   ffmpeg   - ffmpeg serves clips for the network-source tests; ffprobe counts frames in written videos
#   chromium - the live-view page test (tests/integration/test_http_view.py, Playwright drives it)
#   nodejs, npm - the Node.js mask-stream client the tests run (tools/clients/node)
# --no-install-recommends keeps out what those packages merely recommend (compilers, git, fonts, desktop
# services, GPU drivers): none of it is needed by the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need_apt=()
{ command -v ffmpeg >/dev/null && command -v ffprobe >/dev/null; } || need_apt+=(ffmpeg)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

# torch is pinned first: an unpinned torch (or a range that admits newer) pulls a multi-GB CUDA build.
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[dev]"

# The Node.js client's one dependency (zeromq, pinned by package-lock.json) ships prebuilt binaries:
# --ignore-scripts, so no compiler or download step runs.
if [ -f tools/clients/node/package-lock.json ]; then
  (cd tools/clients/node && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
