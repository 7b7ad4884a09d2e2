// Query-to-prototype logits: negative squared Euclidean distance or scaled cosine similarity.
#pragma once

#include <cstdint>
#include <string>

namespace metaedge {

enum class Metric { kSqEuclidean, kCosine };

// "sqeuclidean" | "cosine"; anything else throws std::invalid_argument.
Metric ParseMetric(const std::string& name);
// Throws std::invalid_argument unless scale is finite in float32 and the (c, d) prototypes are
// non-empty. m = 0 queries is allowed: the result is simply (0, c).
void CheckLogitsArgs(std::int64_t m, std::int64_t c, std::int64_t d, double scale);

// queries (m, d), prototypes (c, d), out (m, c): row-major float32 host memory.
// sqeuclidean: out[i][k] = -scale * ||q_i - p_k||^2
// cosine:      out[i][k] = scale * <q_i / max(||q_i||, 1e-12), p_k / max(||p_k||, 1e-12)>
void LogitsCpuKernel(const float* queries, const float* prototypes, float* out, std::int64_t m,
                     std::int64_t c, std::int64_t d, Metric metric, float scale);

#ifdef METAEDGE_WITH_CUDA
// Device pointers (as integers): queries (m, d), prototypes (c, d), out (m, c), float32,
// contiguous, on one device; stream is a cudaStream_t. Asynchronous, like a torch op: returns once
// the kernel is enqueued.
void LogitsCuda(std::uintptr_t queries, std::uintptr_t prototypes, std::uintptr_t out,
                std::int64_t m, std::int64_t c, std::int64_t d, const std::string& metric,
                double scale, std::uintptr_t stream);
#endif

}  // namespace metaedge
