#!/usr/bin/env bash
# Install everything the test suite needs on a fresh Debian/Ubuntu machine, then run the
# whole suite (GUI tests included) under a virtual X server. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
# Xvfb and the libraries Qt + vispy need to draw napari without a screen (GUIDE section 5).
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  xvfb xauth libgl1 libglx-mesa0 libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4 \
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xfixes0 \
  libxcb-xinerama0 libxcb-xinput0 libdbus-1-3 libfontconfig1 >/dev/null

# torch pinned to the CPU build so no multi-GB CUDA wheel is pulled in.
python3 -m pip install -q "torch==2.13.0" -e ".[testing]"

xvfb-run -a -s "-screen 0 1280x1024x24" python3 -m pytest -q -p no:cacheprovider "$@"
