#!/usr/bin/env bash
# Configures and builds tpserve into ./build (Ninja, -j2 by default). Extra args go to cmake.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${TPSERVE_BUILD_DIR:-build}
if [ ! -f "$BUILD/build.ninja" ] || [ $# -gt 0 ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=${CMAKE_BUILD_TYPE:-RelWithDebInfo} "$@"
fi
cmake --build "$BUILD" -j "${TPSERVE_JOBS:-2}"
