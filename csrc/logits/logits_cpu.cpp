// CPU logits: every (query, prototype) pair computed directly, queries in tiles, SIMD over D.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "metaedge/logits.h"

namespace metaedge {
namespace {

// Below this many multiply-adds a parallel region costs more than it saves: a 5-way episode
// (75 queries x 5 classes x 1600 features = 6e5) is already worth two threads, a 5-way 64-d one
// (2.4e4) is not.
constexpr std::int64_t kParallelWork = std::int64_t{1} << 18;
// Queries sharing one pass over the prototypes: each prototype row is read from memory once per
// tile and then served from L1 to the other queries of the tile.
constexpr std::int64_t kQueryTile = 8;
constexpr float kNormEps = 1e-12f;  // torch.nn.functional.normalize's default

// The simd reductions let the compiler reassociate these sums (and so vectorise them, SSE/AVX or
// NEON alike) without -ffast-math leaking into the rest of the file.
inline float Dot(const float* a, const float* b, std::int64_t d) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (std::int64_t t = 0; t < d; ++t) acc += a[t] * b[t];
  return acc;
}

// Direct (q - p)^2 rather than ||q||^2 - 2 q.p + ||p||^2: the expansion cancels catastrophically
// when a query sits close to a prototype, which is exactly where the ranking matters.
inline float SquaredDistance(const float* a, const float* b, std::int64_t d) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (std::int64_t t = 0; t < d; ++t) {
    const float diff = a[t] - b[t];
    acc += diff * diff;
  }
  return acc;
}

inline float InverseNorm(const float* a, std::int64_t d) {
  return 1.0f / std::max(std::sqrt(Dot(a, a, d)), kNormEps);
}

}  // namespace

Metric ParseMetric(const std::string& name) {
  if (name == "sqeuclidean") return Metric::kSqEuclidean;
  if (name == "cosine") return Metric::kCosine;
  throw std::invalid_argument("unknown metric '" + name +
                              "'; choose one of 'sqeuclidean', 'cosine'");
}

void CheckLogitsArgs(std::int64_t m, std::int64_t c, std::int64_t d, double scale) {
  // float32 range too: the kernels multiply in float, where 1e300 would already be inf.
  if (!std::isfinite(scale) || std::fabs(scale) > FLT_MAX) {
    std::ostringstream message;
    message << "scale must be a finite float32 number, got " << scale;
    throw std::invalid_argument(message.str());
  }
  if (m < 0 || c < 1 || d < 1) {
    throw std::invalid_argument("prototypes is empty: shape (" + std::to_string(c) + ", " +
                                std::to_string(d) + ")");
  }
}

void LogitsCpuKernel(const float* queries, const float* prototypes, float* out, std::int64_t m,
                     std::int64_t c, std::int64_t d, Metric metric, float scale) {
  CheckLogitsArgs(m, c, d, scale);
  const bool cosine = metric == Metric::kCosine;
  std::vector<float> prototype_inv_norm(cosine ? c : 0);
  const std::int64_t tiles = (m + kQueryTile - 1) / kQueryTile;

#pragma omp parallel if (m * c * d >= kParallelWork)
  {
    if (cosine) {
#pragma omp for schedule(static)
      for (std::int64_t k = 0; k < c; ++k) {
        prototype_inv_norm[k] = InverseNorm(prototypes + k * d, d);
      }
      // The implicit barrier of the loop above publishes the norms to every thread.
    }
#pragma omp for schedule(static)
    for (std::int64_t tile = 0; tile < tiles; ++tile) {
      const std::int64_t begin = tile * kQueryTile;
      const std::int64_t end = std::min(m, begin + kQueryTile);
      float query_inv_norm[kQueryTile];
      if (cosine) {
        for (std::int64_t i = begin; i < end; ++i) {
          query_inv_norm[i - begin] = InverseNorm(queries + i * d, d);
        }
      }
      for (std::int64_t k = 0; k < c; ++k) {
        const float* p = prototypes + k * d;
        for (std::int64_t i = begin; i < end; ++i) {
          const float* q = queries + i * d;
          out[i * c + k] =
              cosine ? scale * Dot(q, p, d) * query_inv_norm[i - begin] * prototype_inv_norm[k]
                     : -scale * SquaredDistance(q, p, d);
        }
      }
    }
  }
}

}  // namespace metaedge
