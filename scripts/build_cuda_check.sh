#!/usr/bin/env bash
# Proves the CUDA kernels compile, GPU or not: builds metaedge._C with -DMETAEDGE_CUDA=on into a scratch
# directory, shows the architectures nvcc compiled for, and imports the module to show that its static CUDA
# runtime loads (and reports 0 devices) on a machine without a GPU or driver. scripts/build_cuda.sh compiles the
# kernels alone for any architecture list (what CI runs); this builds and loads the Python module with them.
#   usage: scripts/build_cuda_check.sh [BUILD_DIR]
#   env:   PYTHON (python), JOBS (2), CUDA_ARCHS (CMakeLists' default: 80;87;90)
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-$(mktemp -d "${TMPDIR:-/tmp}/metaedge-cuda-check.XXXXXX")}
PYTHON=$(command -v "${PYTHON:-python}")

args=(-S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DMETAEDGE_CUDA=on
  -DPython_EXECUTABLE="$PYTHON" -Dpybind11_DIR="$("$PYTHON" -m pybind11 --cmakedir)")
if command -v ninja >/dev/null; then args+=(-G Ninja); fi
if [ -n "${CUDA_ARCHS:-}" ]; then args+=(-DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS"); fi
cmake "${args[@]}"
cmake --build "$BUILD" -j "${JOBS:-2}"

module=$(find "$BUILD" -maxdepth 1 -name '_C*.so' -o -maxdepth 1 -name '_C*.pyd' | head -n 1)
echo "built: $module"
if command -v ninja >/dev/null; then
  echo "device code: $(ninja -C "$BUILD" -t commands | grep -o 'arch=compute_[0-9a-z]*,code=[^ ]*' | sort -u | tr '\n' ' ')"
fi
if command -v ldd >/dev/null && ldd "$module" | grep -q 'libcudart'; then
  echo "error: $module links the shared CUDA runtime; it must be static" >&2
  exit 1
fi
"$PYTHON" - "$(dirname "$module")" <<'PY'
import sys

sys.path.insert(0, sys.argv[1])
import _C  # the module, loaded outside the package: this only proves that it loads and what it holds

assert _C.cuda_built(), "built with METAEDGE_CUDA=on but cuda_built() is False"
missing = [f for f in ("prototypes_cuda", "logits_cuda", "adapt_head_cuda", "cuda_device_count") if not hasattr(_C, f)]
assert not missing, f"missing CUDA functions: {missing}"
print(f"import ok: cuda_built()={_C.cuda_built()}, cuda_device_count()={_C.cuda_device_count()}")
PY
echo "CUDA build check passed ($BUILD)"
