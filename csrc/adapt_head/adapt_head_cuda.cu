// CUDA head adaptation: the whole loop in one launch of one block (W, b and the logits in shared
// memory) for small problems; past that, a CUDA graph of the three kernels of a step, captured
// once and replayed `steps` times. Labels and step sizes are checked on the device, read back once.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "metaedge/adapt_head.h"
#include "metaedge/cuda_utils.h"

namespace metaedge {
namespace {

constexpr int kWarpSize = 32;
constexpr int kFusedThreads = 1024;  // the most a block may have: the shortest serial sums
constexpr int kPrepareThreads = 256;
constexpr int kSoftmaxWarps = 8;  // rows of the logits per block of SoftmaxGradientKernel
constexpr int kTile = 16;
constexpr int kMaxGridY = 65535;
constexpr float kNormEps = 1e-12f;  // torch.nn.functional.normalize's default
constexpr unsigned long long kNone = ~0ull;
constexpr int kStaticShared = 64;  // bytes of static shared memory the fused kernel may use
// Multiply-adds of one GEMM of a step (C * N * D) up to which one block runs the whole loop. A
// 5-way 5-shot 64-d episode is 8e3: one block finishes a step in a few microseconds, where a
// graph of three kernels costs a few microseconds of launch latency per kernel. Past ~2.6e5 the
// other SMs are worth more than the saved launches.
constexpr std::int64_t kFusedMaxWork = std::int64_t{1} << 18;

// Written by the kernels with atomicMin, so the lowest offending index wins, as on the CPU.
struct Status {
  unsigned long long first_bad_row;        // row whose label is outside [0, num_classes)
  unsigned long long first_empty_class;    // class no row is labelled with
  unsigned long long first_bad_lr_weight;  // entry of lr_weight that is not finite
  unsigned long long first_bad_lr_bias;    // entry of lr_bias that is not finite
};

__device__ float WarpMax(float value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset));
  }
  return value;
}

__device__ float WarpSum(float value) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset);
  }
  return value;
}

// Reductions over aligned segments of `lanes` lanes (a power of two <= 32); every lane of a segment
// gets the result. Every lane of the warp must call them.
__device__ float SegmentSum(float value, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(0xffffffffu, value, offset, lanes);
  }
  return value;
}

__device__ float SegmentMax(float value, int lanes) {
  for (int offset = lanes / 2; offset > 0; offset /= 2) {
    value = fmaxf(value, __shfl_xor_sync(0xffffffffu, value, offset, lanes));
  }
  return value;
}

// How many adjacent lanes share one of `outputs` sums of `length` terms in the fused kernel: a
// power of two <= 32 (a shuffle segment), as many as keep all outputs within one pass of the
// block, and no more than there are terms. More lanes, shorter serial chains per step.
__device__ int SegmentLanes(int outputs, int length) {
  int lanes = 1;
  while (lanes < kWarpSize && outputs * lanes * 2 <= kFusedThreads && lanes < length) lanes *= 2;
  return lanes;
}

// ---- one block, the whole loop ------------------------------------------------------------------

// Where the fused kernel keeps what, in floats of its dynamic shared memory (int arrays take
// float-sized slots). Rows of W and X are ld = d or d + 1 floats apart, whichever is odd: an odd
// stride puts the rows that the lanes of a warp read at one column in different banks.
struct FusedLayout {
  __host__ __device__ FusedLayout(int n, int d, int c, bool x_shared)
      : ld(d | 1),
        weight(0),
        logits(weight + c * ld),
        bias(logits + c * n),
        scratch(bias + c),
        labels(scratch + c),
        x(labels + n),
        total(x + (x_shared ? n * ld : 0)) {}
  int ld;
  int weight;   // (c, ld)
  int logits;   // (c, n): the logits transposed, then G
  int bias;     // (c)
  int scratch;  // (c) class counts (int)
  int labels;   // (n) labels (int)
  int x;        // (n, ld) the embeddings, where they fit
  int total;
};

// grid 1, block kFusedThreads. Checks the labels and step sizes, builds W0 and b0, runs every step,
// writes W and b: one launch. A step is three phases between barriers, each a set of sums, each
// sum split over a segment of adjacent lanes (SegmentLanes) and finished with shuffles: the logits
// (over the features), the softmax gradient of each sample (over the classes), and the update of
// each weight entry (over the samples; column d stands for the bias, against a column of ones).
template <bool kXShared>
__global__ void __launch_bounds__(kFusedThreads, 1)
    FusedAdaptHeadKernel(const float* __restrict__ x, const std::int64_t* __restrict__ labels,
                         const float* __restrict__ lr_weight, const float* __restrict__ lr_bias,
                         float* __restrict__ weight, float* __restrict__ bias, int n, int d, int c,
                         std::int64_t steps, float lr, float weight_decay, bool imprint,
                         Status* status) {
  extern __shared__ float shared[];
  __shared__ int failed;
  const FusedLayout layout(n, d, c, kXShared);
  const int ld = layout.ld;
  float* w_s = shared + layout.weight;
  float* z_s = shared + layout.logits;
  float* b_s = shared + layout.bias;
  int* count_s = reinterpret_cast<int*>(shared + layout.scratch);
  int* label_s = reinterpret_cast<int*>(shared + layout.labels);
  float* x_s = shared + layout.x;
  const int tid = threadIdx.x;
  const int threads = blockDim.x;
  auto x_at = [&](int i, int t) { return kXShared ? x_s[i * ld + t] : __ldg(x + i * d + t); };

  // Checks first: nothing below may index with a label, or start, before they pass.
  if (tid == 0) failed = 0;
  for (int k = tid; k < c; k += threads) count_s[k] = 0;
  __syncthreads();
  for (int i = tid; i < n; i += threads) {
    const std::int64_t label = labels[i];
    if (label < 0 || label >= c) {
      atomicMin(&status->first_bad_row, static_cast<unsigned long long>(i));
      failed = 1;
      label_s[i] = -1;
    } else {
      atomicAdd(&count_s[label], 1);
      label_s[i] = static_cast<int>(label);
    }
  }
  if (lr_weight) {
    for (int e = tid; e < c * d; e += threads) {
      if (!isfinite(lr_weight[e])) {
        atomicMin(&status->first_bad_lr_weight, static_cast<unsigned long long>(e));
        failed = 1;
      }
    }
  }
  if (lr_bias) {
    for (int k = tid; k < c; k += threads) {
      if (!isfinite(lr_bias[k])) {
        atomicMin(&status->first_bad_lr_bias, static_cast<unsigned long long>(k));
        failed = 1;
      }
    }
  }
  __syncthreads();
  for (int k = tid; k < c; k += threads) {
    if (count_s[k] == 0) {
      atomicMin(&status->first_empty_class, static_cast<unsigned long long>(k));
      failed = 1;
    }
  }
  __syncthreads();
  if (failed) return;  // the same value for every thread, read after the barrier

  // X, W0 and b0.
  if (kXShared) {
    for (int e = tid; e < n * d; e += threads) x_s[(e / d) * ld + e % d] = x[e];
    __syncthreads();
  }
  for (int e = tid; e < c * d; e += threads) {
    const int k = e / d;
    const int t = e - k * d;
    float sum = 0.0f;
    if (imprint) {
      for (int i = 0; i < n; ++i) sum += label_s[i] == k ? x_at(i, t) : 0.0f;
      sum /= static_cast<float>(count_s[k]);
    }
    w_s[k * ld + t] = sum;
  }
  __syncthreads();
  if (imprint) {  // each row / max(||row||, 1e-12): a warp per class, the norm parked in b_s
    for (int k = tid / kWarpSize; k < c; k += threads / kWarpSize) {
      float sum_sq = 0.0f;
      for (int t = tid % kWarpSize; t < d; t += kWarpSize)
        sum_sq += w_s[k * ld + t] * w_s[k * ld + t];
      sum_sq = WarpSum(sum_sq);
      if (tid % kWarpSize == 0) b_s[k] = fmaxf(sqrtf(sum_sq), kNormEps);
    }
    __syncthreads();
    for (int e = tid; e < c * d; e += threads) w_s[(e / d) * ld + e % d] /= b_s[e / d];
    __syncthreads();
  }
  for (int k = tid; k < c; k += threads) b_s[k] = 0.0f;
  __syncthreads();

  // Every loop below runs the same number of passes on every thread, so that all the lanes of a
  // warp reach the shuffles together.
  const float inv_n = 1.0f / static_cast<float>(n);
  const int logit_lanes = SegmentLanes(c * n, d);
  const int softmax_lanes = SegmentLanes(n, c);
  const int update_lanes = SegmentLanes(c * (d + 1), n);
  for (std::int64_t step = 0; step < steps; ++step) {
    // Logits, transposed: z[k][i] = W[k] . X[i] + b[k].
    for (int base = 0; base < c * n * logit_lanes; base += threads) {
      const int o = (base + tid) / logit_lanes;
      const int lane = (base + tid) % logit_lanes;
      const int k = o / n;
      const int i = o - k * n;
      float acc = 0.0f;
      if (o < c * n) {
        for (int t = lane; t < d; t += logit_lanes) acc = fmaf(w_s[k * ld + t], x_at(i, t), acc);
      }
      acc = SegmentSum(acc, logit_lanes);
      if (o < c * n && lane == 0) z_s[k * n + i] = acc + b_s[k];
    }
    __syncthreads();
    // G = (softmax - onehot) / n, down each sample's column.
    for (int base = 0; base < n * softmax_lanes; base += threads) {
      const int i = (base + tid) / softmax_lanes;
      const int lane = (base + tid) % softmax_lanes;
      const bool valid = i < n;
      float top = -INFINITY;
      if (valid) {
        for (int k = lane; k < c; k += softmax_lanes) top = fmaxf(top, z_s[k * n + i]);
      }
      top = SegmentMax(top, softmax_lanes);
      float sum = 0.0f;
      if (valid) {
        for (int k = lane; k < c; k += softmax_lanes) {
          const float e = expf(z_s[k * n + i] - top);
          z_s[k * n + i] = e;
          sum += e;
        }
      }
      sum = SegmentSum(sum, softmax_lanes);
      if (valid) {
        const float scale = inv_n / sum;
        const int own = label_s[i];
        for (int k = lane; k < c; k += softmax_lanes) {
          z_s[k * n + i] = z_s[k * n + i] * scale - (k == own ? inv_n : 0.0f);
        }
      }
    }
    __syncthreads();
    // W -= lr_W * (G^T X + wd * W) and b -= lr_b * sum(G): output (k, t), t == d the bias. No
    // output reads another's entry of W or b.
    for (int base = 0; base < c * (d + 1) * update_lanes; base += threads) {
      const int o = (base + tid) / update_lanes;
      const int lane = (base + tid) % update_lanes;
      const int k = o / (d + 1);
      const int t = o - k * (d + 1);
      float grad = 0.0f;
      if (o < c * (d + 1)) {
        for (int i = lane; i < n; i += update_lanes) {
          grad = fmaf(z_s[k * n + i], t < d ? x_at(i, t) : 1.0f, grad);
        }
      }
      grad = SegmentSum(grad, update_lanes);
      if (o < c * (d + 1) && lane == 0) {
        if (t < d) {
          const float w = w_s[k * ld + t];
          const float step_size = lr_weight ? __ldg(lr_weight + k * d + t) : lr;
          w_s[k * ld + t] = w - step_size * (grad + weight_decay * w);
        } else {
          b_s[k] -= (lr_bias ? __ldg(lr_bias + k) : lr) * grad;
        }
      }
    }
    __syncthreads();
  }

  for (int e = tid; e < c * d; e += threads) weight[e] = w_s[(e / d) * ld + e % d];
  for (int k = tid; k < c; k += threads) bias[k] = b_s[k];
}

// ---- the graph path: many blocks, three kernels a step ------------------------------------------

// grid (c), block kPrepareThreads. Block k counts the rows labelled k (reporting an empty class)
// and writes row k of W0 (the normalised class mean, or 0) and b0[k] = 0; block 0 also checks
// every label's range and every step size. Labels are only ever compared here and in the step
// kernels, never used as indices, so the kernels queued behind this one stay in bounds whatever
// the labels are; the host raises once it reads the status.
__global__ void PrepareKernel(const float* __restrict__ x, const std::int64_t* __restrict__ labels,
                              const float* __restrict__ lr_weight,
                              const float* __restrict__ lr_bias, float* __restrict__ weight,
                              float* __restrict__ bias, std::int64_t n, std::int64_t d,
                              std::int64_t c, bool imprint, Status* status) {
  __shared__ float partial[kPrepareThreads / kWarpSize];
  const std::int64_t k = blockIdx.x;
  const int tid = threadIdx.x;
  if (blockIdx.x == 0) {
    for (std::int64_t i = tid; i < n; i += blockDim.x) {
      if (labels[i] < 0 || labels[i] >= c) {
        atomicMin(&status->first_bad_row, static_cast<unsigned long long>(i));
      }
    }
    if (lr_weight) {
      for (std::int64_t e = tid; e < c * d; e += blockDim.x) {
        if (!isfinite(lr_weight[e])) {
          atomicMin(&status->first_bad_lr_weight, static_cast<unsigned long long>(e));
        }
      }
    }
    if (lr_bias) {
      for (std::int64_t j = tid; j < c; j += blockDim.x) {
        if (!isfinite(lr_bias[j])) {
          atomicMin(&status->first_bad_lr_bias, static_cast<unsigned long long>(j));
        }
      }
    }
  }

  // Each thread owns columns tid, tid + blockDim.x, ... of row k: no two threads share a word.
  float* row = weight + k * d;
  for (std::int64_t t = tid; t < d; t += blockDim.x) row[t] = 0.0f;
  std::int64_t count = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    if (labels[i] != k) continue;  // the same branch for the whole block
    ++count;
    if (imprint) {
      for (std::int64_t t = tid; t < d; t += blockDim.x) row[t] += x[i * d + t];
    }
  }
  if (tid == 0) bias[k] = 0.0f;
  if (count == 0) {
    if (tid == 0) atomicMin(&status->first_empty_class, static_cast<unsigned long long>(k));
    return;
  }
  if (!imprint) return;
  float sum_sq = 0.0f;
  for (std::int64_t t = tid; t < d; t += blockDim.x) {
    row[t] /= static_cast<float>(count);
    sum_sq += row[t] * row[t];
  }
  sum_sq = WarpSum(sum_sq);
  if (tid % kWarpSize == 0) partial[tid / kWarpSize] = sum_sq;
  __syncthreads();
  float total = 0.0f;
  for (int w = 0; w < static_cast<int>(blockDim.x) / kWarpSize; ++w) total += partial[w];
  const float denom = fmaxf(sqrtf(total), kNormEps);
  for (std::int64_t t = tid; t < d; t += blockDim.x) row[t] /= denom;
}

// grid (ceil(n / 16), ceil(c / 16)), block (16, 16): logits (n, c) = X W^T + b, thread (x, y) the
// entry (i0 + y, k0 + x). Tiles of X and W staged in shared memory, +1 column against bank
// conflicts, as in the logits kernel.
__global__ void ForwardKernel(const float* __restrict__ x, const float* __restrict__ weight,
                              const float* __restrict__ bias, float* __restrict__ logits,
                              std::int64_t n, std::int64_t d, std::int64_t c) {
  __shared__ float x_tile[kTile][kTile + 1];
  __shared__ float w_tile[kTile][kTile + 1];
  const int tx = threadIdx.x;
  const int ty = threadIdx.y;
  const std::int64_t i0 = static_cast<std::int64_t>(blockIdx.x) * kTile;
  const std::int64_t k0 = static_cast<std::int64_t>(blockIdx.y) * kTile;
  float acc = 0.0f;
  for (std::int64_t t0 = 0; t0 < d; t0 += kTile) {
    const std::int64_t t = t0 + tx;
    x_tile[ty][tx] = (i0 + ty < n && t < d) ? x[(i0 + ty) * d + t] : 0.0f;
    w_tile[ty][tx] = (k0 + ty < c && t < d) ? weight[(k0 + ty) * d + t] : 0.0f;
    __syncthreads();
#pragma unroll
    for (int tt = 0; tt < kTile; ++tt) acc = fmaf(x_tile[ty][tt], w_tile[tx][tt], acc);
    __syncthreads();
  }
  if (i0 + ty < n && k0 + tx < c) logits[(i0 + ty) * c + k0 + tx] = acc + bias[k0 + tx];
}

// grid (ceil(n / kSoftmaxWarps)), block kSoftmaxWarps warps: a warp per sample turns its row of
// logits into G = (softmax - onehot(label)) / n, in place.
__global__ void SoftmaxGradientKernel(float* __restrict__ logits,
                                      const std::int64_t* __restrict__ labels, std::int64_t n,
                                      std::int64_t c) {
  const std::int64_t i =
      static_cast<std::int64_t>(blockIdx.x) * kSoftmaxWarps + threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (i >= n) return;  // the whole warp at once
  float* row = logits + i * c;
  float top = -INFINITY;
  for (std::int64_t k = lane; k < c; k += kWarpSize) top = fmaxf(top, row[k]);
  top = WarpMax(top);
  float sum = 0.0f;
  for (std::int64_t k = lane; k < c; k += kWarpSize) sum += expf(row[k] - top);
  const float inv_n = 1.0f / static_cast<float>(n);
  const float scale = inv_n / WarpSum(sum);
  const std::int64_t own = labels[i];
  for (std::int64_t k = lane; k < c; k += kWarpSize) {
    row[k] = expf(row[k] - top) * scale - (k == own ? inv_n : 0.0f);
  }
}

// grid (ceil(d / 16), ceil(c / 16)), block (16, 16): thread (x, y) takes the step of W[k0 + y]
// [t0 + x], its gradient (G^T X) summed over the samples in tiles of 16; the blocks of the first
// column of the grid also sum their 16 classes' bias gradient from the same G tiles and step b.
__global__ void BackwardKernel(const float* __restrict__ x, const float* __restrict__ grad,
                               const float* __restrict__ lr_weight,
                               const float* __restrict__ lr_bias, float* __restrict__ weight,
                               float* __restrict__ bias, std::int64_t n, std::int64_t d,
                               std::int64_t c, float lr, float weight_decay) {
  __shared__ float g_tile[kTile][kTile + 1];  // [sample][class]
  __shared__ float x_tile[kTile][kTile + 1];  // [sample][feature]
  const int tx = threadIdx.x;
  const int ty = threadIdx.y;
  const std::int64_t t0 = static_cast<std::int64_t>(blockIdx.x) * kTile;
  const std::int64_t k0 = static_cast<std::int64_t>(blockIdx.y) * kTile;
  const bool steps_bias = blockIdx.x == 0 && ty == 0;
  float acc = 0.0f;
  float bias_acc = 0.0f;
  for (std::int64_t i0 = 0; i0 < n; i0 += kTile) {
    const bool row_ok = i0 + ty < n;
    g_tile[ty][tx] = (row_ok && k0 + tx < c) ? grad[(i0 + ty) * c + k0 + tx] : 0.0f;
    x_tile[ty][tx] = (row_ok && t0 + tx < d) ? x[(i0 + ty) * d + t0 + tx] : 0.0f;
    __syncthreads();
#pragma unroll
    for (int ii = 0; ii < kTile; ++ii) acc = fmaf(g_tile[ii][ty], x_tile[ii][tx], acc);
    if (steps_bias) {
      for (int ii = 0; ii < kTile; ++ii) bias_acc += g_tile[ii][tx];
    }
    __syncthreads();
  }
  const std::int64_t k = k0 + ty;
  const std::int64_t t = t0 + tx;
  if (k < c && t < d) {
    const float w = weight[k * d + t];
    weight[k * d + t] = w - (lr_weight ? lr_weight[k * d + t] : lr) * (acc + weight_decay * w);
  }
  if (steps_bias && k0 + tx < c) bias[k0 + tx] -= (lr_bias ? lr_bias[k0 + tx] : lr) * bias_acc;
}

// One step's kernels, captured once from a private stream (a capture cannot run on the legacy
// default stream, which is torch's usual current stream), instantiated, and launched on the
// caller's stream as often as needed. Frees everything on scope exit, exceptions included.
class StepGraph {
 public:
  template <class Enqueue>
  explicit StepGraph(Enqueue&& enqueue) {
    Check(cudaStreamCreateWithFlags(&capture_, cudaStreamNonBlocking), "cudaStreamCreate");
    Check(cudaStreamBeginCapture(capture_, cudaStreamCaptureModeThreadLocal),
          "cudaStreamBeginCapture");
    enqueue(capture_);
    const cudaError_t launched = cudaGetLastError();
    Check(cudaStreamEndCapture(capture_, &graph_), "cudaStreamEndCapture");
    Check(launched, "capturing the step kernels");
    Check(cudaGraphInstantiate(&exec_, graph_, 0), "cudaGraphInstantiate");
  }
  ~StepGraph() {
    if (exec_) cudaGraphExecDestroy(exec_);
    if (graph_) cudaGraphDestroy(graph_);
    if (capture_) cudaStreamDestroy(capture_);
  }
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;
  void Launch(cudaStream_t stream) const {
    Check(cudaGraphLaunch(exec_, stream), "cudaGraphLaunch");
  }

 private:
  cudaStream_t capture_ = nullptr;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace

void AdaptHeadCuda(std::uintptr_t embeddings, std::uintptr_t labels, std::uintptr_t lr_weight,
                   std::uintptr_t lr_bias, std::uintptr_t weight, std::uintptr_t bias,
                   std::int64_t n, std::int64_t d, std::int64_t num_classes, std::int64_t steps,
                   double lr, double weight_decay, const std::string& init,
                   std::uintptr_t stream_handle) {
  const bool imprint = ParseHeadInit(init) == HeadInit::kPrototypes;
  CheckAdaptHeadScalars(steps, lr, weight_decay);
  CheckPrototypesArgs(n, d, num_classes);
  const std::int64_t c = num_classes;
  if (c > static_cast<std::int64_t>(kMaxGridY) * kTile || (n + kTile - 1) / kTile > INT_MAX ||
      (d + kTile - 1) / kTile > INT_MAX) {
    throw std::invalid_argument("adapt_head_cuda: N=" + std::to_string(n) +
                                ", D=" + std::to_string(d) + ", num_classes=" + std::to_string(c) +
                                " exceed the launch grid");
  }
  DeviceGuard guard("adapt_head_cuda", {embeddings, labels, lr_weight, lr_bias, weight, bias});
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const auto* x_ptr = reinterpret_cast<const float*>(embeddings);
  const auto* labels_ptr = reinterpret_cast<const std::int64_t*>(labels);
  const auto* lr_weight_ptr = reinterpret_cast<const float*>(lr_weight);
  const auto* lr_bias_ptr = reinterpret_cast<const float*>(lr_bias);
  auto* weight_ptr = reinterpret_cast<float*>(weight);
  auto* bias_ptr = reinterpret_cast<float*>(bias);
  const auto lr_f = static_cast<float>(lr);
  const auto decay_f = static_cast<float>(weight_decay);

  StreamBuffer<Status> status(1, stream);
  Check(cudaMemsetAsync(status.get(), 0xff, sizeof(Status), stream), "clearing the status word");

  int device = 0;
  int shared_limit = 0;
  Check(cudaGetDevice(&device), "cudaGetDevice");
  Check(cudaDeviceGetAttribute(&shared_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "cudaDeviceGetAttribute");
  const bool small = c * n * d <= kFusedMaxWork;
  const auto bytes = [&](bool x_shared) {
    return static_cast<std::int64_t>(
               FusedLayout(static_cast<int>(n), static_cast<int>(d), static_cast<int>(c), x_shared)
                   .total) *
           static_cast<std::int64_t>(sizeof(float));
  };
  // kStaticShared: the kernel's own __shared__ flag, which shares the per-block limit.
  if (small && bytes(false) + kStaticShared <= shared_limit) {
    const bool x_shared = bytes(true) + kStaticShared <= shared_limit;
    const auto kernel = x_shared ? FusedAdaptHeadKernel<true> : FusedAdaptHeadKernel<false>;
    const auto shared_bytes = static_cast<int>(bytes(x_shared));
    Check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, shared_bytes),
          "cudaFuncSetAttribute");
    kernel<<<1, kFusedThreads, shared_bytes, stream>>>(
        x_ptr, labels_ptr, lr_weight_ptr, lr_bias_ptr, weight_ptr, bias_ptr, static_cast<int>(n),
        static_cast<int>(d), static_cast<int>(c), steps, lr_f, decay_f, imprint, status.get());
    Check(cudaGetLastError(), "launching FusedAdaptHeadKernel");
  } else {
    StreamBuffer<float> logits(static_cast<std::size_t>(n * c), stream);
    float* logits_ptr = logits.get();
    PrepareKernel<<<static_cast<unsigned>(c), kPrepareThreads, 0, stream>>>(
        x_ptr, labels_ptr, lr_weight_ptr, lr_bias_ptr, weight_ptr, bias_ptr, n, d, c, imprint,
        status.get());
    Check(cudaGetLastError(), "launching PrepareKernel");
    if (steps > 0) {
      const dim3 block(kTile, kTile);
      const dim3 forward_grid(static_cast<unsigned>((n + kTile - 1) / kTile),
                              static_cast<unsigned>((c + kTile - 1) / kTile));
      const dim3 backward_grid(static_cast<unsigned>((d + kTile - 1) / kTile),
                               static_cast<unsigned>((c + kTile - 1) / kTile));
      const auto softmax_blocks = static_cast<unsigned>((n + kSoftmaxWarps - 1) / kSoftmaxWarps);
      const StepGraph graph([&](cudaStream_t capture) {
        ForwardKernel<<<forward_grid, block, 0, capture>>>(x_ptr, weight_ptr, bias_ptr, logits_ptr,
                                                           n, d, c);
        SoftmaxGradientKernel<<<softmax_blocks, kSoftmaxWarps * kWarpSize, 0, capture>>>(
            logits_ptr, labels_ptr, n, c);
        BackwardKernel<<<backward_grid, block, 0, capture>>>(x_ptr, logits_ptr, lr_weight_ptr,
                                                             lr_bias_ptr, weight_ptr, bias_ptr, n,
                                                             d, c, lr_f, decay_f);
      });
      for (std::int64_t step = 0; step < steps; ++step) graph.Launch(stream);
    }
  }

  // The one synchronisation: the checks ran on the device, and an invalid call must raise here,
  // not hand back silently wrong weights. Step sizes first, then labels, as the CPU checks them.
  Status host{};
  Check(cudaMemcpyAsync(&host, status.get(), sizeof(Status), cudaMemcpyDeviceToHost, stream),
        "reading the status word");
  Check(cudaStreamSynchronize(stream), "adapt_head kernels");
  if (host.first_bad_lr_weight != kNone) ThrowNonFiniteStepSizes("lr_weight");
  if (host.first_bad_lr_bias != kNone) ThrowNonFiniteStepSizes("lr_bias");
  if (host.first_bad_row != kNone) {
    const auto row = static_cast<std::int64_t>(host.first_bad_row);
    std::int64_t label = 0;
    Check(cudaMemcpy(&label, labels_ptr + row, sizeof(label), cudaMemcpyDeviceToHost),
          "reading the bad label");
    ThrowLabelOutOfRange(row, label, c);
  }
  if (host.first_empty_class != kNone) {
    ThrowEmptyClass(static_cast<std::int64_t>(host.first_empty_class));
  }
}

}  // namespace metaedge
