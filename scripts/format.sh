#!/usr/bin/env bash
# clang-format (the repo's .clang-format: Google style, column 100) over every C++/CUDA source.
#   scripts/format.sh          rewrite the files in place
#   scripts/format.sh --check  list the files that differ and fail if any does (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
# Tracked files and new ones git does not ignore: a file formatted only once it is committed
# would reach CI's check unformatted.
mapfile -t files < <(git ls-files --cached --others --exclude-standard '*.cpp' '*.h' '*.cu' '*.cuh')
if [ "${1:-}" = "--check" ]; then
  # Layout details move between clang-format releases; the tree is kept in Debian 12's (14).
  version=$(clang-format --version | grep -Eo 'version [0-9]+' | grep -Eo '[0-9]+')
  if [ "$version" != 14 ]; then
    echo "format: check skipped: the tree is formatted with clang-format 14, this is $version"
    exit 0
  fi
  bad=()
  for f in "${files[@]}"; do
    clang-format --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
  done
  if ((${#bad[@]})); then
    echo "format: these files differ from clang-format (run scripts/format.sh): ${bad[*]}"
    exit 1
  fi
  echo "format: ${#files[@]} files clean"
else
  clang-format -i "${files[@]}"
fi
