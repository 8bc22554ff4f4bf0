#!/usr/bin/env bash
# The newcomer's test command: installs what is missing, fetches the real models, builds, and runs
# every GPU-free test (ctest; tests labelled `gpu` skip themselves when no GPU is present).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export TPSERVE_MODELS=$(scripts/fetch-models.sh)
scripts/build.sh
cd "${TPSERVE_BUILD_DIR:-build}"
ctest --output-on-failure -j "${TPSERVE_TEST_JOBS:-2}" --timeout 600
