// CUDA logits: one 16 x 16 tile of the output per block, inputs staged through shared memory.
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "metaedge/cuda_utils.h"
#include "metaedge/logits.h"

namespace metaedge {
namespace {

constexpr int kTile = 16;
constexpr int kMaxGridY = 65535;
constexpr float kNormEps = 1e-12f;  // torch.nn.functional.normalize's default

// grid (ceil(m / 16), ceil(c / 16)), block (16, 16): thread (x, y) computes out[q0 + y][p0 + x].
// Per step of 16 features, thread (x, y) loads feature x of query row y and of prototype row y,
// so each half-warp reads 16 consecutive floats; the +1 column keeps the column-wise reads of the
// prototype tile free of bank conflicts. Out-of-range rows and features load as 0, which adds
// nothing to a dot product, a norm or a squared difference.
template <bool kCosine>
__global__ void LogitsKernel(const float* __restrict__ queries,
                             const float* __restrict__ prototypes, float* __restrict__ out,
                             std::int64_t m, std::int64_t c, std::int64_t d, float scale) {
  __shared__ float query_tile[kTile][kTile + 1];
  __shared__ float prototype_tile[kTile][kTile + 1];
  const int x = threadIdx.x;
  const int y = threadIdx.y;
  const std::int64_t q0 = static_cast<std::int64_t>(blockIdx.x) * kTile;
  const std::int64_t p0 = static_cast<std::int64_t>(blockIdx.y) * kTile;

  float acc = 0.0f;  // dot product (cosine) or squared distance
  float query_sq = 0.0f;
  float prototype_sq = 0.0f;
  for (std::int64_t k0 = 0; k0 < d; k0 += kTile) {
    const std::int64_t k = k0 + x;
    query_tile[y][x] = (q0 + y < m && k < d) ? queries[(q0 + y) * d + k] : 0.0f;
    prototype_tile[y][x] = (p0 + y < c && k < d) ? prototypes[(p0 + y) * d + k] : 0.0f;
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTile; ++kk) {
      const float a = query_tile[y][kk];
      const float b = prototype_tile[x][kk];
      if constexpr (kCosine) {
        // Norms from the same staged tiles: recomputed per pair, but free next to the loads.
        acc = fmaf(a, b, acc);
        query_sq = fmaf(a, a, query_sq);
        prototype_sq = fmaf(b, b, prototype_sq);
      } else {
        // Direct (q - p)^2: no cancellation when a query sits on top of a prototype.
        const float diff = a - b;
        acc = fmaf(diff, diff, acc);
      }
    }
    __syncthreads();
  }

  const std::int64_t row = q0 + y;
  const std::int64_t col = p0 + x;
  if (row < m && col < c) {
    if constexpr (kCosine) {
      const float denom = fmaxf(sqrtf(query_sq), kNormEps) * fmaxf(sqrtf(prototype_sq), kNormEps);
      out[row * c + col] = scale * (acc / denom);
    } else {
      out[row * c + col] = -scale * acc;
    }
  }
}

}  // namespace

void LogitsCuda(std::uintptr_t queries, std::uintptr_t prototypes, std::uintptr_t out,
                std::int64_t m, std::int64_t c, std::int64_t d, const std::string& metric,
                double scale, std::uintptr_t stream_handle) {
  const Metric parsed = ParseMetric(metric);
  CheckLogitsArgs(m, c, d, scale);
  if (m == 0) return;  // nothing to compute, and a zero-sized grid is a launch error
  const std::int64_t query_blocks = (m + kTile - 1) / kTile;
  const std::int64_t prototype_blocks = (c + kTile - 1) / kTile;
  if (query_blocks > INT32_MAX || prototype_blocks > kMaxGridY) {
    throw std::invalid_argument("logits_cuda: M=" + std::to_string(m) + ", C=" + std::to_string(c) +
                                " exceed the launch grid");
  }
  DeviceGuard guard("logits_cuda", {queries, prototypes, out});
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const auto* queries_ptr = reinterpret_cast<const float*>(queries);
  const auto* prototypes_ptr = reinterpret_cast<const float*>(prototypes);
  auto* out_ptr = reinterpret_cast<float*>(out);

  const dim3 grid(static_cast<unsigned>(query_blocks), static_cast<unsigned>(prototype_blocks));
  const dim3 block(kTile, kTile);
  const auto scale_f = static_cast<float>(scale);
  if (parsed == Metric::kCosine) {
    LogitsKernel<true>
        <<<grid, block, 0, stream>>>(queries_ptr, prototypes_ptr, out_ptr, m, c, d, scale_f);
  } else {
    LogitsKernel<false>
        <<<grid, block, 0, stream>>>(queries_ptr, prototypes_ptr, out_ptr, m, c, d, scale_f);
  }
  Check(cudaGetLastError(), "launching LogitsKernel");
}

}  // namespace metaedge
