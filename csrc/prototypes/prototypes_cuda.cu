// CUDA class prototypes: a segmented mean without float atomics (so results are run-to-run
// deterministic), an optional row normalisation, and label checks read back once.
#include <cuda_runtime.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "metaedge/cuda_utils.h"
#include "metaedge/prototypes.h"

namespace metaedge {
namespace {

constexpr int kWarpSize = 32;
constexpr int kMaxThreads = 256;  // also the number of labels one block scans per step
constexpr int kMaxGridY = 65535;
constexpr float kNormEps = 1e-12f;  // torch.nn.functional.normalize's default
constexpr unsigned long long kNone = ~0ull;

// Written by the kernels with atomicMin, so the lowest offending index wins, as on the CPU.
struct Status {
  unsigned long long first_bad_row;      // row whose label is outside [0, num_classes)
  unsigned long long first_empty_class;  // class no row is labelled with
};

// grid (num_classes, ceil(d / blockDim.x)), blockDim.x a multiple of 32 and <= kMaxThreads.
// Block (k, j) owns class k and columns [j * blockDim.x, (j + 1) * blockDim.x): it walks all labels
// in order, blockDim.x at a time, compacts the rows labelled k into shared memory (keeping their
// order), and adds those rows' columns, one column per thread, coalesced across the warp. Each
// output element has exactly one writer and a fixed summation order: no atomics, deterministic.
// Every block reads all n labels (n * num_classes label reads in all): cheap for episodes and
// enrolment galleries, where num_classes is at most a few thousand and the labels stay in L2.
__global__ void SegmentedMeanKernel(const float* __restrict__ embeddings,
                                    const std::int64_t* __restrict__ labels,
                                    float* __restrict__ out, std::int64_t n, std::int64_t d,
                                    std::int64_t num_classes, Status* status) {
  __shared__ std::int64_t rows[kMaxThreads];
  __shared__ int warp_hits[kMaxThreads / kWarpSize];
  const std::int64_t cls = blockIdx.x;
  const std::int64_t col = static_cast<std::int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  // One block reports bad labels; the others skip the atomics (they would find the same rows).
  const bool reports_labels = blockIdx.x == 0 && blockIdx.y == 0;

  float acc = 0.0f;
  std::int64_t count = 0;
  for (std::int64_t base = 0; base < n; base += blockDim.x) {
    const std::int64_t i = base + threadIdx.x;
    const std::int64_t label = i < n ? labels[i] : -1;
    if (reports_labels && i < n && (label < 0 || label >= num_classes)) {
      atomicMin(&status->first_bad_row, static_cast<unsigned long long>(i));
    }
    const bool hit = label == cls;
    const unsigned ballot = __ballot_sync(0xffffffffu, hit);
    if (lane == 0) warp_hits[warp] = __popc(ballot);
    __syncthreads();
    int offset = 0;
    int total = 0;
    for (int w = 0; w < warps; ++w) {
      offset += w < warp ? warp_hits[w] : 0;
      total += warp_hits[w];
    }
    if (hit) rows[offset + __popc(ballot & ((1u << lane) - 1u))] = i;
    __syncthreads();
    if (col < d) {
      for (int r = 0; r < total; ++r) acc += embeddings[rows[r] * d + col];
    }
    count += total;
    __syncthreads();  // rows and warp_hits are overwritten by the next step
  }
  if (col < d) out[cls * d + col] = count > 0 ? acc / static_cast<float>(count) : 0.0f;
  if (count == 0 && blockIdx.y == 0 && threadIdx.x == 0) {
    atomicMin(&status->first_empty_class, static_cast<unsigned long long>(cls));
  }
}

// Sum over the block; blockDim.x a multiple of 32 and <= kMaxThreads. Every thread gets the total.
__device__ float BlockSum(float value) {
  __shared__ float partial[kMaxThreads / kWarpSize];
  __shared__ float total;
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  if (threadIdx.x % kWarpSize == 0) partial[threadIdx.x / kWarpSize] = value;
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int w = 0; w < static_cast<int>(blockDim.x) / kWarpSize; ++w) sum += partial[w];
    total = sum;
  }
  __syncthreads();
  return total;
}

// grid (num_classes), block kMaxThreads: row k /= max(||row k||, 1e-12), in place.
__global__ void NormalizeRowsKernel(float* __restrict__ rows, std::int64_t d) {
  float* row = rows + static_cast<std::int64_t>(blockIdx.x) * d;
  float sum_sq = 0.0f;
  for (std::int64_t t = threadIdx.x; t < d; t += blockDim.x) sum_sq += row[t] * row[t];
  const float denom = fmaxf(sqrtf(BlockSum(sum_sq)), kNormEps);
  for (std::int64_t t = threadIdx.x; t < d; t += blockDim.x) row[t] /= denom;
}

}  // namespace

void PrototypesCuda(std::uintptr_t embeddings, std::uintptr_t labels, std::uintptr_t out,
                    std::int64_t n, std::int64_t d, std::int64_t num_classes, bool normalize,
                    std::uintptr_t stream_handle) {
  CheckPrototypesArgs(n, d, num_classes);
  // Narrow blocks for narrow embeddings: a thread per column, no idle warps below 256 columns.
  const int threads = static_cast<int>(
      std::min<std::int64_t>(kMaxThreads, (d + kWarpSize - 1) / kWarpSize * kWarpSize));
  const std::int64_t column_blocks = (d + threads - 1) / threads;
  if (num_classes > INT_MAX || column_blocks > kMaxGridY) {
    throw std::invalid_argument("prototypes_cuda: num_classes=" + std::to_string(num_classes) +
                                ", D=" + std::to_string(d) + " exceed the launch grid");
  }
  DeviceGuard guard("prototypes_cuda", {embeddings, labels, out});
  const auto stream = reinterpret_cast<cudaStream_t>(stream_handle);
  const auto* embeddings_ptr = reinterpret_cast<const float*>(embeddings);
  const auto* labels_ptr = reinterpret_cast<const std::int64_t*>(labels);
  auto* out_ptr = reinterpret_cast<float*>(out);

  // Stream-ordered scratch (cuda_utils.h): concurrent calls on different streams never share it.
  StreamBuffer<Status> status(1, stream);
  Check(cudaMemsetAsync(status.get(), 0xff, sizeof(Status), stream), "clearing the status word");
  const dim3 grid(static_cast<unsigned>(num_classes), static_cast<unsigned>(column_blocks));
  SegmentedMeanKernel<<<grid, threads, 0, stream>>>(embeddings_ptr, labels_ptr, out_ptr, n, d,
                                                    num_classes, status.get());
  Check(cudaGetLastError(), "launching SegmentedMeanKernel");
  if (normalize) {
    NormalizeRowsKernel<<<static_cast<unsigned>(num_classes), kMaxThreads, 0, stream>>>(out_ptr, d);
    Check(cudaGetLastError(), "launching NormalizeRowsKernel");
  }

  // The one synchronisation: labels live on the device, and an invalid episode must raise here,
  // not come back as silently wrong prototypes.
  Status host{};
  Check(cudaMemcpyAsync(&host, status.get(), sizeof(Status), cudaMemcpyDeviceToHost, stream),
        "reading the status word");
  Check(cudaStreamSynchronize(stream), "prototypes kernels");
  if (host.first_bad_row != kNone) {
    const auto row = static_cast<std::int64_t>(host.first_bad_row);
    std::int64_t label = 0;
    Check(cudaMemcpy(&label, labels_ptr + row, sizeof(label), cudaMemcpyDeviceToHost),
          "reading the bad label");
    ThrowLabelOutOfRange(row, label, num_classes);
  }
  if (host.first_empty_class != kNone) {
    ThrowEmptyClass(static_cast<std::int64_t>(host.first_empty_class));
  }
}

}  // namespace metaedge
