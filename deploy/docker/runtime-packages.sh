#!/usr/bin/env bash
# Prints the Debian/Ubuntu packages that own the shared libraries the given executables load, one per
# line, so the runtime image installs exactly what the build stage linked against (no hand-kept list
# to drift from CMake). Libraries no package owns (the CUDA driver, libraries of the base image that
# came without dpkg records) are skipped with a note on stderr.
#
#   deploy/docker/runtime-packages.sh BINARY... > runtime-packages.txt
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }

owner() {  # owner LIBPATH -> package name, or nothing
  local lib=$1 cand
  # Debian 12 / Ubuntu 24.04 merge /lib into /usr/lib: dpkg knows a file under one spelling only.
  for cand in "$lib" "$(realpath "$lib")" "/usr$lib" "${lib#/usr}"; do
    if dpkg -S "$cand" >/dev/null 2>&1; then
      dpkg -S "$cand" 2>/dev/null | head -1 | cut -d: -f1
      return 0
    fi
  done
  echo "runtime-packages: no package owns $lib (skipped)" >&2
}

for bin in "$@"; do
  # The CUDA driver (libcuda, libnvidia-*) is mounted into the container by the NVIDIA runtime,
  # so it is absent at build time; anything else unresolved is a broken build.
  missing=$(ldd "$bin" | grep 'not found' | grep -v -E 'libcuda\.so|libnvidia-' || true)
  if [ -n "$missing" ]; then
    echo "runtime-packages: $bin has unresolved libraries:" >&2
    echo "$missing" >&2
    exit 1
  fi
  ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'
done | sort -u | while read -r lib; do owner "$lib"; done | sort -u
