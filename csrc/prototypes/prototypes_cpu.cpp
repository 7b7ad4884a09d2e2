// CPU class prototypes: a stable gather of each class's rows, summed in double, then normalised.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "metaedge/prototypes.h"

namespace metaedge {
namespace {

// Below this many element reads a parallel region costs more than it saves; a 20-way 5-shot
// episode with 1600-d embeddings (1.6e5) stays on one thread.
constexpr std::int64_t kParallelWork = std::int64_t{1} << 18;
constexpr double kNormEps = 1e-12;  // torch.nn.functional.normalize's default

}  // namespace

void CheckPrototypesArgs(std::int64_t n, std::int64_t d, std::int64_t num_classes) {
  if (num_classes < 1) {
    throw std::invalid_argument("num_classes must be >= 1, got " + std::to_string(num_classes));
  }
  if (n < 1 || d < 1) {
    throw std::invalid_argument("embeddings is empty: shape (" + std::to_string(n) + ", " +
                                std::to_string(d) + ")");
  }
}

void ThrowLabelOutOfRange(std::int64_t index, std::int64_t label, std::int64_t num_classes) {
  throw std::invalid_argument("labels[" + std::to_string(index) + "] = " + std::to_string(label) +
                              " is out of range for num_classes=" + std::to_string(num_classes));
}

void ThrowEmptyClass(std::int64_t cls) {
  throw std::invalid_argument("class " + std::to_string(cls) + " has no samples");
}

void PrototypesCpuKernel(const float* embeddings, const std::int64_t* labels, float* out,
                         std::int64_t n, std::int64_t d, std::int64_t num_classes, bool normalize) {
  CheckPrototypesArgs(n, d, num_classes);

  // All checks happen here, serially, before any parallel region: an exception must not escape
  // an OpenMP region, and no later loop may index with an unchecked label.
  std::vector<std::int64_t> start(num_classes + 1, 0);
  for (std::int64_t i = 0; i < n; ++i) {
    const std::int64_t label = labels[i];
    if (label < 0 || label >= num_classes) ThrowLabelOutOfRange(i, label, num_classes);
    ++start[label + 1];
  }
  for (std::int64_t k = 0; k < num_classes; ++k) {
    if (start[k + 1] == 0) ThrowEmptyClass(k);
  }
  std::partial_sum(start.begin(), start.end(), start.begin());

  // Stable counting sort: each class's rows in input order, so every class is summed in the same
  // order whatever the thread count, and the threads (one class each) never share an output row.
  std::vector<std::int64_t> rows(n);
  {
    std::vector<std::int64_t> next(start.begin(), start.end() - 1);
    for (std::int64_t i = 0; i < n; ++i) rows[next[labels[i]]++] = i;
  }

  // Sums in double: a class can hold thousands of rows (a gallery enrolled on the device) and a
  // float sum would drift by about one ulp per row. The loop is bound by reading the float
  // embeddings, so the wider accumulator costs nothing measurable, and the result is the correctly
  // rounded mean that the float64 numpy reference also produces.
#pragma omp parallel if (n * d >= kParallelWork && num_classes > 1)
  {
    std::vector<double> acc_buffer(d);
    double* acc = acc_buffer.data();
#pragma omp for schedule(static)
    for (std::int64_t k = 0; k < num_classes; ++k) {
      std::fill(acc, acc + d, 0.0);
      for (std::int64_t j = start[k]; j < start[k + 1]; ++j) {
        const float* row = embeddings + rows[j] * d;
#pragma omp simd
        for (std::int64_t t = 0; t < d; ++t) acc[t] += row[t];
      }
      const double count = static_cast<double>(start[k + 1] - start[k]);
      double sum_sq = 0.0;
#pragma omp simd reduction(+ : sum_sq)
      for (std::int64_t t = 0; t < d; ++t) {
        acc[t] /= count;
        sum_sq += acc[t] * acc[t];
      }
      const double denom = normalize ? std::max(std::sqrt(sum_sq), kNormEps) : 1.0;
      float* dst = out + k * d;
#pragma omp simd
      for (std::int64_t t = 0; t < d; ++t) dst[t] = static_cast<float>(acc[t] / denom);
    }
  }
}

}  // namespace metaedge
