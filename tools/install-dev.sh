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
# mosquitto: the MQTT broker the MQTT sink's tests start on 127.0.0.1 (tests/integration/test_mqtt.py)
{ command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ]; } || need_apt+=(mosquitto)
# GStreamer's RTSP server (gir1.2-gst-rtsp-server-1.0, with python3-gi for /usr/bin/python3), x264enc
# (gstreamer1.0-plugins-ugly), rtph264pay/qtdemux (-good), videotestsrc (-base): the camera that the RTSP
# tests start on 127.0.0.1 (tests/integration/rtsp_server.py)
/usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import Gst
Gst.init(None); assert all(map(Gst.ElementFactory.find, ("x264enc", "rtph264pay", "qtdemux", "videotestsrc")))' \
  2>/dev/null || need_apt+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-ugly gstreamer1.0-plugins-good \
    gstreamer1.0-plugins-base)
if [ ${#need_apt[@]} -gt 0 ]; then
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

# torch is pinned first: an unpinned torch (or a range that admits newer) pulls a multi-GB CUDA build.
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e ".[dev]"
# An editable install leaves the sources uncompiled, and where PYTHONDONTWRITEBYTECODE is set every process
# the tests start would compile ~60 modules again (0.1-0.3 s each): compile them once, as pip does on install.
python3 -m compileall -q stream engines >/dev/null
# Likewise the compiled mask encoders (numba, stream/maskcodec): compiled once into numba's on-disk cache here,
# so that no test (and no stage) pays the few seconds of a first compilation.
python3 -c 'from stream.maskcodec import segments; [segments.warm(f) for f in segments.FORMATS]'

# The Triton tests' server: PyTriton (nvidia-pytriton bundles tritonserver) needs numpy < 2, which the project's
# environment cannot have (opencv-python 5 needs numpy 2), so it gets a virtual environment of its own. Its
# Python-backend stub embeds libpython: the interpreter must have been built with a shared libpython (pyenv's
# here is; docs/deploy/pytriton_serve.py points the stub at it), else Debian's python3 is used.
PYTRITON_PY=python3
python3 -c 'import sysconfig, sys; sys.exit(0 if sysconfig.get_config_var("Py_ENABLE_SHARED") else 1)' \
  || PYTRITON_PY=/usr/bin/python3
[ -x .venv-pytriton/bin/python ] || "$PYTRITON_PY" -m venv .venv-pytriton
.venv-pytriton/bin/python -m pip install -q "nvidia-pytriton==0.7.0" "numpy<2" "onnxruntime==1.32.0"

# The Node.js client's one dependency (zeromq, pinned by package-lock.json) ships prebuilt binaries:
# --ignore-scripts, so no compiler or download step runs.
if [ -f tools/clients/node/package-lock.json ]; then
  (cd tools/clients/node && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
