#!/usr/bin/env bash
# Installs the system packages kvcompress needs (only those missing), then configures and builds
# into build/ (Release; with CUDA when nvcc is found). Safe to run again: it does only what is left.
#   scripts/setup.sh          what building and training need; builds the library and `kvcompress`
#   scripts/setup.sh --tests  adds the test extras (doctest, clang-format, Python with numpy, h5py
#                             and torch for the PyTorch interop tests, Open MPI for the 2-rank
#                             data-parallel tests) and builds the test binary too
# Data-parallel training is built wherever MPI is installed (libopenmpi-dev openmpi-bin).
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=OFF
case "${1:-}" in
  "") ;;
  --tests) with_tests=ON ;;
  *) echo "usage: scripts/setup.sh [--tests]" >&2; exit 2 ;;
esac

packages=(cmake ninja-build g++ pkg-config libhdf5-dev libspdlog-dev libcli11-dev libopenblas-dev
          nlohmann-json3-dev ccache)
if [ "$with_tests" = ON ]; then
  packages+=(doctest-dev clang-format python3 python3-numpy python3-h5py python3-torch
             libopenmpi-dev openmpi-bin)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}"
fi

build_dir=${KVC_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVC_BUILD_TESTS="$with_tests" \
  ${KVC_CMAKE_ARGS:-}
cmake --build "$build_dir" -j "$(nproc)"
