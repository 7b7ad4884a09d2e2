#!/usr/bin/env bash
# Builds the C++ kernels' native tests (csrc/tests) for this host and, cross-compiled, for aarch64 Linux
# (cmake/toolchains/aarch64-linux-gnu.cmake, Debian's g++-aarch64-linux-gnu), and runs both: natively, and under
# qemu-aarch64. Both are held to the shared test vectors in csrc/tests/vectors (the x86-64 results) within 1e-5.
# On an aarch64 machine the native run is the aarch64 run, and the cross build is skipped. Installs what is missing
# with apt-get (Debian/Ubuntu). Exits non-zero on any failure.
#   usage: scripts/test_aarch64.sh [--no-host]
#   env:   JOBS (2), BUILD (build/kernel-tests), METAEDGE_ARCH_FLAGS (-march=armv8-a; -mcpu=cortex-a78ae for Orin)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
JOBS=${JOBS:-2}
BUILD=${BUILD:-build/kernel-tests}
host=1
for arg in "$@"; do
  case $arg in
    --no-host) host=0 ;;
    -h | --help) sed -n '2,8p' "$0" | cut -c3-; exit 0 ;;
    *) echo "error: unknown argument '$arg' (see --help)" >&2; exit 2 ;;
  esac
done

# On an aarch64 machine (a Jetson, a Raspberry Pi) the native run is the aarch64 run: no cross compiler, no qemu.
native_arm=0
if [ "$(uname -m)" = aarch64 ]; then native_arm=1; host=1; fi

# ---- what it needs ------------------------------------------------------------------------------------------------
missing=()
if [ "$native_arm" = 0 ]; then
  command -v aarch64-linux-gnu-g++ >/dev/null || missing+=(g++-aarch64-linux-gnu)
  command -v qemu-aarch64 >/dev/null || command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user)
fi
command -v cmake >/dev/null || missing+=(cmake)
command -v ninja >/dev/null || missing+=(ninja-build)
if [ "$host" = 1 ] && ! command -v c++ >/dev/null; then missing+=(g++); fi
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null || { echo "error: missing ${missing[*]}, and no apt-get to install them" >&2; exit 1; }
  sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || { echo "error: missing ${missing[*]}; install them as root" >&2; exit 1; }
    sudo=(sudo)
  fi
  echo "installing ${missing[*]}"
  t=$SECONDS
  # A fresh machine has no package lists yet; -qq keeps the log to errors.
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "installed in $((SECONDS - t)) s"
fi

# ---- build and test -----------------------------------------------------------------------------------------------
# configure DIR [cmake args...]: the kernels and their tests only; no Python, pybind11 or CUDA.
configure() {
  local dir=$1
  shift
  local args=(-S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMETAEDGE_BUILD_PYTHON=OFF
    -DMETAEDGE_BUILD_TESTS=ON -DMETAEDGE_CUDA=off "$@")
  cmake "${args[@]}" >"$dir.configure.log" 2>&1 || { cat "$dir.configure.log"; exit 1; }
  grep -- '-- metaedge:' "$dir.configure.log" || true
}

run_tests() {
  (cd "$1" && ctest --output-on-failure -j "$JOBS")
}

mkdir -p "$BUILD"
if [ "$host" = 1 ]; then
  echo "== host ($(uname -m))"
  host_args=()
  if [ "$native_arm" = 1 ]; then host_args=(-DMETAEDGE_ARCH_FLAGS="${METAEDGE_ARCH_FLAGS:-}"); fi
  configure "$BUILD/host" "${host_args[@]}"
  cmake --build "$BUILD/host" -j "$JOBS"
  run_tests "$BUILD/host"
fi

if [ "$native_arm" = 1 ]; then
  echo "aarch64 kernel tests (native) passed in $((SECONDS - start)) s"
  exit 0
fi

echo "== aarch64 (cross-compiled, run under qemu-aarch64)"
configure "$BUILD/aarch64" -DCMAKE_TOOLCHAIN_FILE=cmake/toolchains/aarch64-linux-gnu.cmake \
  -DMETAEDGE_ARCH_FLAGS="${METAEDGE_ARCH_FLAGS:-}"
# Without the emulator ctest would try to execute the aarch64 binaries directly.
qemu=$(sed -n 's/^METAEDGE_QEMU_AARCH64:FILEPATH=//p' "$BUILD/aarch64/CMakeCache.txt")
[ -x "$qemu" ] || { echo "error: the toolchain file found no qemu-aarch64" >&2; exit 1; }
cmake --build "$BUILD/aarch64" -j "$JOBS"
run_tests "$BUILD/aarch64"
# The table once more, for the log: how far aarch64 lands from the stored x86-64 results.
"$qemu" -L /usr/aarch64-linux-gnu "$BUILD/aarch64/csrc/tests/metaedge_kernel_tests" csrc/tests/vectors \
  prototypes logits adapt_head

echo "aarch64 kernel tests passed in $((SECONDS - start)) s"
