// CPU head adaptation: the whole gradient-descent loop in one call, on buffers allocated before the
// first step, with register-tiled GEMMs, a vectorised softmax, and OpenMP for large problems only.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "metaedge/adapt_head.h"

namespace metaedge {
namespace {

// The GEMM micro-kernel's register tile: kMr output rows x kNr output columns, all accumulators
// held in vector registers for the whole reduction. With AVX-512, 6 x 32 takes 12 of its 32
// registers as zmm (24 as ymm); elsewhere 6 x 16 fits AVX2's 16 registers (12 accumulators) and
// NEON's 32 (24) without spilling.
#if defined(__AVX512F__)
constexpr int kNr = 32;
#else
constexpr int kNr = 16;
#endif
constexpr int kMr = 6;
// Rows of B per pass over A: the kKc x kNr slice of a B panel (16 KiB at kNr = 32) stays in L1
// while every row block of A streams past it.
constexpr std::int64_t kKc = 128;
// Multiply-adds per step from which the loop runs on every OpenMP thread (~5 us of one core). Two
// threads measured 1.4x faster there on 2 Zen 4 cores, 1.7x at 2e6; far below it (a 5-way 5-shot
// episode is ~1e4 a step) a step takes a few hundred nanoseconds, less than one barrier costs.
constexpr std::int64_t kParallelWork = std::int64_t{1} << 19;
constexpr std::size_t kAlignment = 64;  // one cache line; also the widest SIMD register

std::int64_t RoundUp(std::int64_t value, std::int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

// Work sharing among the threads of the loop's parallel region, or plain loops when there is none:
// libgomp's barriers cost a futex system call each even in a team of one thread, a microsecond a
// step of a 5-way episode that otherwise takes a few hundred nanoseconds.
class Team {
 public:
  explicit Team(bool parallel) : parallel_(parallel) {}

  // body() on every thread of a new parallel region, or once, on this thread.
  template <class Body>
  void Run(Body&& body) const {
    if (parallel_) {
#pragma omp parallel
      body();
    } else {
      body();
    }
  }
  // body(i) for i in [0, count), shared out statically; ends in a barrier.
  template <class Body>
  void For(std::int64_t count, Body&& body) const {
    if (parallel_) {
#pragma omp for schedule(static)
      for (std::int64_t i = 0; i < count; ++i) body(i);
    } else {
      for (std::int64_t i = 0; i < count; ++i) body(i);
    }
  }
  // The same, handed out one at a time: another process may hold one of the cores.
  template <class Body>
  void ForDynamic(std::int64_t count, Body&& body) const {
    if (parallel_) {
#pragma omp for schedule(dynamic)
      for (std::int64_t i = 0; i < count; ++i) body(i);
    } else {
      for (std::int64_t i = 0; i < count; ++i) body(i);
    }
  }
  // body() on the team's first thread; the others go on without waiting for it.
  template <class Body>
  void OnFirstThread(Body&& body) const {
#ifdef _OPENMP
    if (parallel_ && omp_get_thread_num() != 0) return;
#endif
    body();
  }

 private:
  bool parallel_;
};

// Zero-filled float storage whose first element sits on a cache line, so that rows whose length is
// a multiple of kNr are aligned for the vector loads.
class Buffer {
 public:
  explicit Buffer(std::int64_t count = 0)
      : storage_(static_cast<std::size_t>(count) + kAlignment / sizeof(float), 0.0f) {
    void* raw = storage_.data();
    std::size_t space = storage_.size() * sizeof(float);
    data_ = static_cast<float*>(std::align(kAlignment, sizeof(float), raw, space));
  }
  // A move keeps the vector's storage and so the aligned pointer into it; a copy would not.
  Buffer(Buffer&&) = default;
  Buffer& operator=(Buffer&&) = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  float* data() { return data_; }
  const float* data() const { return data_; }

 private:
  std::vector<float> storage_;
  float* data_ = nullptr;
};

// The B operand of a GEMM, packed so that the micro-kernel reads it sequentially: column panel j
// (columns j * kNr ... j * kNr + kNr - 1) is one contiguous (rows x kNr) block, zero past the last
// column. Every B of the loop (X, X^T, X X^T) is made from the embeddings alone, so it is packed
// once, before the first step.
struct PackedB {
  PackedB(std::int64_t rows_, std::int64_t cols_)
      : rows(rows_), cols(cols_), panels((cols_ + kNr - 1) / kNr), data(rows_ * panels * kNr) {}
  float* Panel(std::int64_t j) { return data.data() + j * rows * kNr; }
  const float* Panel(std::int64_t j) const { return data.data() + j * rows * kNr; }

  std::int64_t rows;  // the reduction length K
  std::int64_t cols;
  std::int64_t panels;
  Buffer data;
};

// B = src (rows x cols, row stride ld), or its transpose when `transpose` (src is cols x rows).
PackedB Pack(const float* src, std::int64_t rows, std::int64_t cols, std::int64_t ld,
             bool transpose) {
  PackedB b(rows, cols);
  for (std::int64_t j = 0; j < b.panels; ++j) {
    float* panel = b.Panel(j);
    const std::int64_t width = std::min<std::int64_t>(kNr, cols - j * kNr);
    for (std::int64_t p = 0; p < rows; ++p) {
      for (std::int64_t t = 0; t < width; ++t) {
        const std::int64_t col = j * kNr + t;
        panel[p * kNr + t] = transpose ? src[col * ld + p] : src[p * ld + col];
      }
    }
  }
  return b;
}

// acc (R x kNr) = a (R rows from `a`, row stride lda, kc columns) @ b (kc x kNr, packed), added to
// the sums so far in `partial` unless `first`; handed to store(row, acc_row) when `last`, else
// saved back to `partial`. acc stays in registers for the whole kc loop: R and kNr are constants.
template <int R, class Store>
inline void MicroKernel(const float* __restrict a, std::int64_t lda, const float* __restrict b,
                        std::int64_t kc, float* __restrict partial, std::int64_t ldp, bool first,
                        bool last, std::int64_t row, Store& store) {
  float acc[R][kNr];
  for (int i = 0; i < R; ++i) {
#pragma omp simd
    for (int j = 0; j < kNr; ++j) acc[i][j] = first ? 0.0f : partial[i * ldp + j];
  }
  for (std::int64_t p = 0; p < kc; ++p) {
    const float* b_row = b + p * kNr;
    for (int i = 0; i < R; ++i) {
      const float a_ip = a[i * lda + p];
#pragma omp simd
      for (int j = 0; j < kNr; ++j) acc[i][j] += a_ip * b_row[j];
    }
  }
  for (int i = 0; i < R; ++i) {
    if (last) {
      store(row + i, acc[i]);
    } else {
#pragma omp simd
      for (int j = 0; j < kNr; ++j) partial[i * ldp + j] = acc[i][j];
    }
  }
}

// MicroKernel<rows> for the 1 .. R rows left in the last row block.
template <int R, class... Args>
inline void MicroKernelRows(std::int64_t rows, Args&&... args) {
  if constexpr (R > 1) {
    if (rows < R) return MicroKernelRows<R - 1>(rows, std::forward<Args>(args)...);
  }
  MicroKernel<R>(std::forward<Args>(args)...);
}

// out (m x b.cols) = a (m x b.rows, row stride lda) @ b. Each finished tile row goes to
// store(row, col, acc) with acc[0 .. kNr) = out[row][col .. col + kNr), past b.cols included (zero
// B columns; the caller keeps or drops them). `partial` (m x b.panels * kNr) carries the sums
// between K slices when b.rows > kKc. The team shares out the column panels, and the thread that
// finished panel j calls panel_done(j) (columns j * kNr ... j * kNr + kNr - 1 of out are final);
// each output element is computed by one thread in one fixed order, whatever the thread count.
template <class Store, class PanelDone>
void Gemm(const Team& team, const float* a, std::int64_t lda, std::int64_t m, const PackedB& b,
          float* partial, Store&& store, PanelDone&& panel_done) {
  const std::int64_t ldp = b.panels * kNr;
  team.ForDynamic(b.panels, [&](std::int64_t j) {
    const std::int64_t col = j * kNr;
    auto store_row = [&store, col](std::int64_t row, const float* acc) { store(row, col, acc); };
    for (std::int64_t k0 = 0; k0 < b.rows; k0 += kKc) {
      const std::int64_t kc = std::min(kKc, b.rows - k0);
      const bool first = k0 == 0;
      const bool last = k0 + kc == b.rows;
      const float* b_slice = b.Panel(j) + k0 * kNr;
      for (std::int64_t r = 0; r < m; r += kMr) {
        const float* a_block = a + r * lda + k0;
        float* p = partial + r * ldp + col;
        MicroKernelRows<kMr>(std::min<std::int64_t>(kMr, m - r), a_block, lda, b_slice, kc, p, ldp,
                             first, last, r, store_row);
      }
    }
    panel_done(j);
  });
}

template <class Store>
void Gemm(const Team& team, const float* a, std::int64_t lda, std::int64_t m, const PackedB& b,
          float* partial, Store&& store) {
  Gemm(team, a, lda, m, b, partial, store, [](std::int64_t) {});
}

// exp(x) for x <= 0 (softmax arguments after the max is subtracted), as plain arithmetic so that
// it vectorises inside the simd loops on any ISA: x = n ln2 + r with |r| <= ln2 / 2, Cephes'
// degree-6 polynomial for exp(r), and 2^n built in the exponent bits. Relative error < 1.5 ulp.
// Below -87 the result stays at exp(-87) ~ 1.6e-38 instead of going subnormal: nothing next to the
// probability 1 of the max. NaN stays NaN.
inline float ExpNonPositive(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kRound =
      12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer, in the low bits
  constexpr float kLn2High = 0.693359375f;
  constexpr float kLn2Low = -2.12194440e-4f;
  x = std::max(x, -87.0f);
  const float shifted = x * kLog2e + kRound;
  const float n = shifted - kRound;
  std::int32_t n_bits;
  std::memcpy(&n_bits, &shifted, sizeof(n_bits));
  const float r = x - n * kLn2High - n * kLn2Low;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const std::int32_t scale_bits = (n_bits - 0x4B400000 + 127) << 23;  // 2^n, n in [-126, 0]
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof(scale));
  return p * scale;
}

// The shapes of one problem and the padded row strides of its buffers.
struct Shape {
  std::int64_t n;  // support samples
  std::int64_t d;  // features
  std::int64_t c;  // classes
  std::int64_t
      np;  // n rounded up to kNr: row stride of the (c, n) logits, gradient, dual coefficients
  std::int64_t dp;  // d rounded up to kNr: row stride of the (c, d) weight inside the loop
};

// The labels padded to np entries with -1: no class owns a padding column.
std::vector<std::int64_t> PaddedLabels(const std::int64_t* labels, const Shape& s) {
  std::vector<std::int64_t> padded(s.np, -1);
  std::copy(labels, labels + s.n, padded.begin());
  return padded;
}

// The softmax gradient of one chunk of kNr samples, in place. z (c x np) holds the logits
// X W^T + b transposed, one row per class, so that the softmax over the classes of a sample runs
// down a column and vectorises across samples. Columns [col, col + kNr) become
// G = (softmax - onehot(labels)) / n, zero past sample n (own = PaddedLabels); grad_bias[k] gets
// the chunk's share of class k's bias gradient (the row sum of G). The chunk's c rows stay in L1
// across the passes.
void SoftmaxGradientChunk(float* z, std::int64_t col, const std::int64_t* padded_labels,
                          float* grad_bias, const Shape& s) {
  const float inv_n = 1.0f / static_cast<float>(s.n);
  float* chunk = z + col;
  float top[kNr];
  float sum[kNr];
#pragma omp simd
  for (int j = 0; j < kNr; ++j) {
    top[j] = chunk[j];
    sum[j] = 0.0f;
  }
  for (std::int64_t k = 1; k < s.c; ++k) {
    const float* row = chunk + k * s.np;
#pragma omp simd
    for (int j = 0; j < kNr; ++j) top[j] = std::max(top[j], row[j]);
  }
  for (std::int64_t k = 0; k < s.c; ++k) {
    float* row = chunk + k * s.np;
#pragma omp simd
    for (int j = 0; j < kNr; ++j) {
      row[j] = ExpNonPositive(row[j] - top[j]);
      sum[j] += row[j];
    }
  }
  // P / n - onehot / n in one expression, and the bias gradient summed from the finished G.
  const std::int64_t* own = padded_labels + col;
#pragma omp simd
  for (int j = 0; j < kNr; ++j) sum[j] = (own[j] >= 0 ? inv_n : 0.0f) / sum[j];  // padding: 0
  for (std::int64_t k = 0; k < s.c; ++k) {
    float* row = chunk + k * s.np;
    float grad = 0.0f;
#pragma omp simd reduction(+ : grad)
    for (int j = 0; j < kNr; ++j) {
      row[j] = row[j] * sum[j] - (own[j] == k ? inv_n : 0.0f);
      grad += row[j];
    }
    grad_bias[k] = grad;
  }
}

// b -= lr_b * grad_b, grad_b summed over the chunks' shares (chunk_grads: chunks x c) in chunk
// order, so that the result does not depend on which thread did which chunk.
void StepBias(float* bias, const float* chunk_grads, const float* lr_bias, float lr,
              const Shape& s) {
  const std::int64_t chunks = s.np / kNr;
  for (std::int64_t k = 0; k < s.c; ++k) {
    float grad = 0.0f;
    for (std::int64_t chunk = 0; chunk < chunks; ++chunk) grad += chunk_grads[chunk * s.c + k];
    bias[k] -= (lr_bias ? lr_bias[k] : lr) * grad;
  }
}

// W updated in place, as the definition reads: W -= lr_W * (G^T X + weight_decay * W). A step is
// two GEMMs: X W^T + b, each column panel turned into its softmax gradient by the thread that
// computed it, then G^T X, its tiles ending in the update. Two barriers a step in all.
void PrimalLoop(const Team& team, const float* x, const std::int64_t* labels,
                const float* lr_weight, const float* lr_bias, float* weight, float* bias,
                const Shape& s, const AdaptHeadOptions& options) {
  const PackedB x_t = Pack(x, s.d, s.n, s.d, /*transpose=*/true);   // forward B: (d, n)
  const PackedB x_b = Pack(x, s.n, s.d, s.d, /*transpose=*/false);  // backward B: (n, d)
  Buffer w(s.c * s.dp);
  Buffer step_w(lr_weight ? s.c * s.dp : 0);
  for (std::int64_t k = 0; k < s.c; ++k) {
    std::copy(weight + k * s.d, weight + (k + 1) * s.d, w.data() + k * s.dp);
    if (lr_weight) {
      std::copy(lr_weight + k * s.d, lr_weight + (k + 1) * s.d, step_w.data() + k * s.dp);
    }
  }
  Buffer z(s.c * s.np);
  Buffer chunk_grads(s.np / kNr * s.c);
  Buffer partial(s.c * std::max(s.np, s.dp));  // GEMM sums between K slices
  const std::vector<std::int64_t> own = PaddedLabels(labels, s);

  float* w_ptr = w.data();
  float* z_ptr = z.data();
  float* chunk_grads_ptr = chunk_grads.data();
  const float* step_w_ptr = lr_weight ? step_w.data() : nullptr;
  const float lr = options.lr;
  const float weight_decay = options.weight_decay;
  auto store_logits = [&](std::int64_t k, std::int64_t col, const float* acc) {
    float* dst = z_ptr + k * s.np + col;
    const float b = bias[k];
#pragma omp simd
    for (int j = 0; j < kNr; ++j) dst[j] = acc[j] + b;
  };
  auto softmax_panel = [&](std::int64_t j) {
    SoftmaxGradientChunk(z_ptr, j * kNr, own.data(), chunk_grads_ptr + j * s.c, s);
  };
  // The update reads only its own tile of W: no other tile of this GEMM depends on it.
  auto update_weight = [&](std::int64_t k, std::int64_t col, const float* grad) {
    float* dst = w_ptr + k * s.dp + col;
    if (step_w_ptr) {
      const float* step = step_w_ptr + k * s.dp + col;
#pragma omp simd
      for (int j = 0; j < kNr; ++j) dst[j] -= step[j] * (grad[j] + weight_decay * dst[j]);
    } else {
#pragma omp simd
      for (int j = 0; j < kNr; ++j) dst[j] -= lr * (grad[j] + weight_decay * dst[j]);
    }
  };

  // One parallel region for all the steps. The barrier closing the first GEMM publishes G and the
  // bias gradient; the one closing the second publishes W and b to the next step.
  team.Run([&] {
    for (std::int64_t step = 0; step < options.steps; ++step) {
      Gemm(team, w_ptr, s.dp, s.c, x_t, partial.data(), store_logits, softmax_panel);
      team.OnFirstThread([&] { StepBias(bias, chunk_grads_ptr, lr_bias, lr, s); });
      Gemm(team, z_ptr, s.np, s.c, x_b, partial.data(), update_weight);
    }
  });

  for (std::int64_t k = 0; k < s.c; ++k) {
    std::copy(w_ptr + k * s.dp, w_ptr + k * s.dp + s.d, weight + k * s.d);
  }
}

// The same iterates, with W = a * W0 + A X carried as the scalar a and the coefficients A (c, n):
// the logits are a * (W0 X^T) + A (X X^T) + b, and a step is A <- (1 - lr wd) A - lr G,
// a <- (1 - lr wd) a (the padding columns of A stay 0, as G's do). X X^T and W0 X^T are computed
// once; W is formed once, at the end.
void DualLoop(const Team& team, const float* x, const std::int64_t* labels, const float* lr_bias,
              float* weight, float* bias, const Shape& s, const AdaptHeadOptions& options) {
  const bool imprinted = options.init == HeadInit::kPrototypes;
  const PackedB x_t = Pack(x, s.d, s.n, s.d, /*transpose=*/true);   // (d, n)
  const PackedB x_b = Pack(x, s.n, s.d, s.d, /*transpose=*/false);  // (n, d)
  PackedB gram(s.n, s.n);                                           // X X^T, packed as a B
  Buffer z0(imprinted ? s.c * s.np : 0);                            // W0 X^T, transposed
  Buffer coef(s.c * s.np);                                          // A
  Buffer z(s.c * s.np);
  Buffer chunk_grads(s.np / kNr * s.c);
  Buffer partial(std::max(s.c, s.n) * std::max(s.np, s.dp));  // GEMM sums between K slices
  const std::vector<std::int64_t> own = PaddedLabels(labels, s);

  float* z_ptr = z.data();
  float* z0_ptr = z0.data();
  float* coef_ptr = coef.data();
  float* gram_ptr = gram.data.data();
  float* chunk_grads_ptr = chunk_grads.data();
  const float lr = options.lr;
  const float shrink =
      1.0f - options.lr * options.weight_decay;  // the weight decay's share of a step

  auto store_gram = [&](std::int64_t row, std::int64_t col, const float* acc) {
    float* dst = gram_ptr + (col / kNr) * s.n * kNr + row * kNr;  // packed layout of `gram`
#pragma omp simd
    for (int j = 0; j < kNr; ++j) dst[j] = acc[j];
  };
  auto store_z0 = [&](std::int64_t k, std::int64_t col, const float* acc) {
    float* dst = z0_ptr + k * s.np + col;
#pragma omp simd
    for (int j = 0; j < kNr; ++j) dst[j] = acc[j];
  };
  auto softmax_panel = [&](std::int64_t j) {
    SoftmaxGradientChunk(z_ptr, j * kNr, own.data(), chunk_grads_ptr + j * s.c, s);
  };
  // A's rows take their step once every panel has read A (the barrier closing the GEMM).
  auto step_coef = [&](std::int64_t k) {
    float* row = coef_ptr + k * s.np;
    const float* grad = z_ptr + k * s.np;
#pragma omp simd
    for (std::int64_t i = 0; i < s.np; ++i) row[i] = shrink * row[i] - lr * grad[i];
  };

  team.Run([&] {
    float a = 1.0f;  // the weight of W0 in W; every thread keeps the same copy, unsynchronised
    auto store_logits = [&](std::int64_t k, std::int64_t col, const float* acc) {
      float* dst = z_ptr + k * s.np + col;
      const float b = bias[k];
      if (imprinted) {
        const float* base = z0_ptr + k * s.np + col;
#pragma omp simd
        for (int j = 0; j < kNr; ++j) dst[j] = a * base[j] + acc[j] + b;
      } else {
#pragma omp simd
        for (int j = 0; j < kNr; ++j) dst[j] = acc[j] + b;
      }
    };
    auto store_weight = [&](std::int64_t k, std::int64_t col, const float* acc) {
      float* dst = weight + k * s.d + col;  // the output itself: W0 in, W out, tile by tile
      const std::int64_t width = std::min<std::int64_t>(kNr, s.d - col);
      for (std::int64_t j = 0; j < width; ++j) dst[j] = (imprinted ? a * dst[j] : 0.0f) + acc[j];
    };

    Gemm(team, x, s.d, s.n, x_t, partial.data(), store_gram);
    if (imprinted) Gemm(team, weight, s.d, s.c, x_t, partial.data(), store_z0);
    for (std::int64_t step = 0; step < options.steps; ++step) {
      Gemm(team, coef_ptr, s.np, s.c, gram, partial.data(), store_logits, softmax_panel);
      team.OnFirstThread([&] { StepBias(bias, chunk_grads_ptr, lr_bias, lr, s); });
      team.For(s.c, step_coef);
      a *= shrink;
    }
    Gemm(team, coef_ptr, s.np, s.c, x_b, partial.data(), store_weight);
  });
}

void CheckLabels(const std::int64_t* labels, std::int64_t n, std::int64_t num_classes) {
  std::vector<char> seen(num_classes, 0);
  for (std::int64_t i = 0; i < n; ++i) {
    if (labels[i] < 0 || labels[i] >= num_classes) ThrowLabelOutOfRange(i, labels[i], num_classes);
    seen[labels[i]] = 1;
  }
  for (std::int64_t k = 0; k < num_classes; ++k) {
    if (!seen[k]) ThrowEmptyClass(k);
  }
}

void CheckFloat32(double value, const char* name) {
  if (!std::isfinite(value) || std::fabs(value) > FLT_MAX) {
    std::ostringstream message;
    message << name << " must be a finite float32 number, got " << value;
    throw std::invalid_argument(message.str());
  }
}

}  // namespace

HeadInit ParseHeadInit(const std::string& name) {
  if (name == "prototypes") return HeadInit::kPrototypes;
  if (name == "zeros") return HeadInit::kZeros;
  throw std::invalid_argument("unknown init '" + name + "'; choose one of 'prototypes', 'zeros'");
}

HeadForm ParseHeadForm(const std::string& name) {
  if (name == "auto") return HeadForm::kAuto;
  if (name == "primal") return HeadForm::kPrimal;
  if (name == "dual") return HeadForm::kDual;
  throw std::invalid_argument("unknown form '" + name +
                              "'; choose one of 'auto', 'primal', 'dual'");
}

void CheckAdaptHeadScalars(std::int64_t steps, double lr, double weight_decay) {
  if (steps < 0) throw std::invalid_argument("steps must be >= 0, got " + std::to_string(steps));
  CheckFloat32(lr, "lr");
  CheckFloat32(weight_decay, "weight_decay");
}

void ThrowNonFiniteStepSizes(const char* name) {
  throw std::invalid_argument(std::string(name) + " must hold finite numbers");
}

void CheckStepSizesFinite(const float* values, std::int64_t count, const char* name) {
  for (std::int64_t i = 0; i < count; ++i) {
    if (!std::isfinite(values[i])) ThrowNonFiniteStepSizes(name);
  }
}

void AdaptHeadCpuKernel(const float* embeddings, const std::int64_t* labels, const float* lr_weight,
                        const float* lr_bias, float* weight, float* bias, std::int64_t n,
                        std::int64_t d, std::int64_t num_classes, const AdaptHeadOptions& options) {
  // Every check before any output is written, and outside any parallel region.
  CheckAdaptHeadScalars(options.steps, options.lr, options.weight_decay);
  CheckPrototypesArgs(n, d, num_classes);
  if (lr_weight) CheckStepSizesFinite(lr_weight, num_classes * d, "lr_weight");
  if (lr_bias) CheckStepSizesFinite(lr_bias, num_classes, "lr_bias");
  if (options.form == HeadForm::kDual && lr_weight) {
    throw std::invalid_argument("form='dual' needs the scalar weight step size (lr_weight=None)");
  }
  CheckLabels(labels, n, num_classes);

  const Shape s{n, d, num_classes, RoundUp(n, kNr), RoundUp(d, kNr)};
  if (options.init == HeadInit::kPrototypes) {
    PrototypesCpuKernel(embeddings, labels, weight, n, d, num_classes, /*normalize=*/true);
  } else {
    std::fill(weight, weight + num_classes * d, 0.0f);
  }
  std::fill(bias, bias + num_classes, 0.0f);
  if (options.steps == 0) return;

  // Multiply-adds of each form, padding included (the GEMMs compute whole kNr-column panels).
  const double steps = static_cast<double>(options.steps);
  const double primal_step = static_cast<double>(s.c) * (s.d * s.np + s.n * s.dp);
  const double dual_step = static_cast<double>(s.c) * s.n * s.np;
  const double dual_setup = static_cast<double>(s.n) * s.d * s.np + 2.0 * s.c * s.n * s.dp;
  HeadForm form = options.form;
  if (form == HeadForm::kAuto) {
    form = !lr_weight && dual_setup + steps * dual_step < steps * primal_step ? HeadForm::kDual
                                                                              : HeadForm::kPrimal;
  }
  if (form == HeadForm::kDual) {
    const Team team(dual_step >= kParallelWork || dual_setup >= kParallelWork * steps);
    DualLoop(team, embeddings, labels, lr_bias, weight, bias, s, options);
  } else {
    const Team team(primal_step >= kParallelWork);
    PrimalLoop(team, embeddings, labels, lr_weight, lr_bias, weight, bias, s, options);
  }
}

}  // namespace metaedge
