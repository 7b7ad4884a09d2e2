#!/usr/bin/env bash
# Compiles the CUDA kernels (csrc/*/*.cu) for the chosen GPU architectures and nothing else: no GPU, driver, Python or
# link step. CMake builds them as the object library metaedge_cuda_kernels (METAEDGE_BUILD_PYTHON=OFF,
# METAEDGE_CUDA=on), with the CUDA settings of the module's own build (architectures, -O3, C++17). Exits non-zero on
# any error.
#   usage: scripts/build_cuda.sh [--target PROFILE]... [ARCHS]
#     ARCHS             ';'- or ','-separated: 80 (A100), 87 (Jetson Orin), 90 (H100), 110 (Jetson Thor), ...
#                       default: $CMAKE_CUDA_ARCHITECTURES, else $CUDAARCHS, else "87;90" (unless --target gives some)
#     --target PROFILE  adds the cuda_architectures of export/PROFILE.json, e.g. --target jetson-orin-nano
#   env: NVCC (else nvcc on PATH, /usr/local/bin/nvcc, /usr/local/cuda/bin/nvcc), JOBS (2), BUILD (build/cuda-kernels)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
JOBS=${JOBS:-2}
BUILD=${BUILD:-build/cuda-kernels}

archs=()
profiles=()
while [ $# -gt 0 ]; do
  case $1 in
    --target) [ $# -ge 2 ] || { echo "error: --target needs a profile name" >&2; exit 2; }; profiles+=("$2"); shift 2 ;;
    --target=*) profiles+=("${1#--target=}"); shift ;;
    -h | --help) sed -n '2,10p' "$0" | cut -c3-; exit 0 ;;
    -*) echo "error: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) IFS=';,' read -r -a given <<<"$1"; archs+=("${given[@]}"); shift ;;
  esac
done

for profile in "${profiles[@]}"; do
  file=export/$profile.json
  if [ ! -f "$file" ]; then
    echo "error: no target profile '$profile'; export/ has: $(basename -s .json export/*.json | tr '\n' ' ')" >&2
    exit 2
  fi
  mapfile -t listed < <(python3 -c 'import json, sys; print(*json.load(open(sys.argv[1]))["cuda_architectures"])' \
    "$file" | tr ' ' '\n' | sed '/^$/d')
  if [ "${#listed[@]}" -eq 0 ]; then
    echo "error: target profile '$profile' has no CUDA GPU (its cuda_architectures is empty)" >&2
    exit 2
  fi
  archs+=("${listed[@]}")
done
if [ "${#archs[@]}" -eq 0 ] && [ "${#profiles[@]}" -eq 0 ]; then
  IFS=';,' read -r -a archs <<<"${CMAKE_CUDA_ARCHITECTURES:-${CUDAARCHS:-87;90}}"
fi
mapfile -t archs < <(printf '%s\n' "${archs[@]}" | sed '/^$/d' | sort -un)

# ---- the compiler ---------------------------------------------------------------------------------------------------
nvcc=${NVCC:-}
if [ -n "$nvcc" ] && [ ! -x "$nvcc" ]; then
  echo "error: NVCC=$nvcc is not an executable" >&2
  exit 1
fi
if [ -z "$nvcc" ]; then
  for candidate in "$(command -v nvcc || true)" /usr/local/bin/nvcc /usr/local/cuda/bin/nvcc; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then nvcc=$candidate; break; fi
  done
fi
if [ -z "$nvcc" ]; then
  echo "error: nvcc not found (looked on PATH, in /usr/local/bin and /usr/local/cuda/bin): install the CUDA toolkit," \
    "or set NVCC=/path/to/nvcc" >&2
  exit 1
fi
version=$("$nvcc" --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')
# Asked here rather than left to nvcc, so that an architecture this toolkit lacks gets a clear message.
supported=$("$nvcc" --list-gpu-arch | sed 's/^compute_//' | tr '\n' ' ')
for arch in "${archs[@]}"; do
  base=${arch%%-*}                       # 87-real, 90-virtual: CMake's suffixes
  if [[ ! " $supported " == *" ${base} "* ]] && [[ ! " $supported " == *" ${base%[af]} "* ]]; then
    echo "error: nvcc $version cannot compile for sm_$arch; it supports: $supported" >&2
    exit 1
  fi
done
cuda_archs=$(IFS=';'; echo "${archs[*]}")
echo "nvcc $version ($nvcc), architectures $cuda_archs"

# ---- configure and compile --------------------------------------------------------------------------------------------
generator=()
if command -v ninja >/dev/null; then generator=(-G Ninja); fi
mkdir -p "$BUILD"
if ! cmake -S . -B "$BUILD" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release -DMETAEDGE_BUILD_PYTHON=OFF \
  -DMETAEDGE_CUDA=on -DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES="$cuda_archs" \
  >"$BUILD/configure.log" 2>&1; then
  cat "$BUILD/configure.log"
  exit 1
fi
cmake --build "$BUILD" --target metaedge_cuda_kernels -j "$JOBS"
echo "CUDA kernels compiled for $cuda_archs in $((SECONDS - start)) s"
