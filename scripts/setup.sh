#!/usr/bin/env bash
# Installs the system packages kvcompress needs (only those missing), then configures and builds
# into build/ (Release; with CUDA when nvcc is found). Safe to run again: it does only what is left.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(cmake ninja-build g++ pkg-config libhdf5-dev libspdlog-dev doctest-dev libcli11-dev
          libopenblas-dev ccache clang-format python3 python3-numpy python3-h5py python3-torch)
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
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release ${KVC_CMAKE_ARGS:-}
cmake --build "$build_dir" -j "$(nproc)"
