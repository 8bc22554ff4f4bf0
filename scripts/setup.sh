#!/usr/bin/env bash
# Installs everything tpserve needs on a fresh Debian 12 machine: Debian packages for the C++ build
# and a project-local Python virtual environment (.venv) for tests and client tools. Idempotent: when
# nothing is missing it only checks and returns in a few seconds.
#
#   scripts/setup.sh            # C++ build deps + .venv with test requirements
#   scripts/setup.sh --reference # also .venv-ref with the heavy reference stack (torch, transformers)
#   scripts/setup.sh --peers     # also .venv-peers with peer engines (llama-cpp-python, compiled)
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libgloo-dev libopenblas-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libpcre2-dev libutf8proc-dev libicu-dev zlib1g-dev
  libspdlog-dev libfmt-dev libcli11-dev
  prometheus-cpp-dev libcpp-httplib-dev
  iproute2 unzip python3-venv
)

missing=()
for p in "${DEBIAN_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3}
make_venv() {  # make_venv DIR REQUIREMENTS
  local dir=$1 req=$2 stamp=$1/.requirements.sha
  local want; want=$(sha256sum "$req" | cut -d' ' -f1)
  if [ -x "$dir/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  echo "setup: preparing $dir from $req"
  [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
  "$dir/bin/pip" install -q --disable-pip-version-check -r "$req"
  echo "$want" >"$stamp"
}
make_venv .venv scripts/requirements-test.txt
if [ "${1:-}" = "--reference" ]; then
  make_venv .venv-ref scripts/reference/requirements.txt
fi
if [ "${1:-}" = "--peers" ]; then
  CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} make_venv .venv-peers bench/peers/requirements.txt
fi
echo "setup: ok"
