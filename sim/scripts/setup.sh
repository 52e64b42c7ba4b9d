#!/usr/bin/env bash
# kvsim set-up: installs the Debian packages it needs (when missing),
# configures and builds (CUDA twin too when nvcc is found), then runs the
# main job on the embedded default trace.
#   bash sim/scripts/setup.sh            # build dir: ./build
#   BUILD_DIR=out bash sim/scripts/setup.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=${BUILD_DIR:-build}
PKGS="g++ cmake make libhdf5-dev hdf5-tools libboost-program-options-dev libboost-dev libeigen3-dev catch2 gnuplot-nox"

missing=""
for p in $PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing:$missing"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

# nvcc is optional; look in the usual place when it is not on PATH.
if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH=/usr/local/cuda/bin:$PATH
fi

cmake -S . -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release
cmake --build "$BUILD_DIR" -j "$(nproc)"
"$BUILD_DIR/sim/kvsim" --workdir "$BUILD_DIR/kvsim-out"
