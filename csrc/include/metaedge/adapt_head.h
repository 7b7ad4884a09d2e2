// Head adaptation: a linear softmax head trained on a support set by full-batch gradient descent.
#pragma once

#include <cstdint>
#include <string>

#include "metaedge/prototypes.h"

namespace metaedge {

// W0 = the L2-normalised class means (weight imprinting) or 0; b0 = 0 either way.
enum class HeadInit { kPrototypes, kZeros };

// How the CPU loop represents W. kPrimal updates W (C, D) itself: 2*N*C*D multiply-adds a step.
// kDual keeps W = a * W0 + A @ X with A (C, N), and the logits as a * (W0 @ X^T) + A @ (X @ X^T):
// N*N*C a step after an N*N*D set-up, the cheaper form when N is small next to D (a few-shot
// episode). It exists only for a scalar weight step size. kAuto picks by multiply-add count.
enum class HeadForm { kAuto, kPrimal, kDual };

struct AdaptHeadOptions {
  std::int64_t steps = 50;
  float lr = 0.1f;
  float weight_decay = 0.0f;
  HeadInit init = HeadInit::kPrototypes;
  HeadForm form = HeadForm::kAuto;
};

// "prototypes" | "zeros", "auto" | "primal" | "dual"; anything else throws std::invalid_argument.
HeadInit ParseHeadInit(const std::string& name);
HeadForm ParseHeadForm(const std::string& name);
// Throws std::invalid_argument unless steps >= 0 and lr, weight_decay are finite in float32
// (checked in this order, with the messages metaedge._reference uses).
void CheckAdaptHeadScalars(std::int64_t steps, double lr, double weight_decay);
// Throws std::invalid_argument unless every entry of a step-size array is finite; `name` is
// "lr_weight" or "lr_bias". The message every backend uses comes from ThrowNonFiniteStepSizes.
void CheckStepSizesFinite(const float* values, std::int64_t count, const char* name);
[[noreturn]] void ThrowNonFiniteStepSizes(const char* name);

// embeddings (n, d) float32, labels (n,) int64 in [0, num_classes) with every class present,
// lr_weight (num_classes, d) and lr_bias (num_classes,) float32 or nullptr (then options.lr),
// weight (num_classes, d) and bias (num_classes,) float32 outputs; all row-major host memory.
// Runs options.steps steps of W -= lr_W * (G^T X + weight_decay * W), b -= lr_b * sum_rows(G),
// G = (softmax(X W^T + b) - onehot(labels)) / n, from options.init. Checks every argument (labels
// included) before writing the outputs. Single-threaded below a work threshold, OpenMP above it.
void AdaptHeadCpuKernel(const float* embeddings, const std::int64_t* labels, const float* lr_weight,
                        const float* lr_bias, float* weight, float* bias, std::int64_t n,
                        std::int64_t d, std::int64_t num_classes, const AdaptHeadOptions& options);

#ifdef METAEDGE_WITH_CUDA
// Device pointers (as integers): embeddings (n, d) float32, labels (n,) int64, lr_weight
// (num_classes, d) and lr_bias (num_classes,) float32 or 0 (then lr), weight (num_classes, d) and
// bias (num_classes,) float32 outputs; contiguous, on one device; stream is a cudaStream_t.
// Enqueues the whole loop on `stream` (one fused kernel when W, b and the logits fit in one
// block's shared memory, else a CUDA graph of the per-step kernels), then waits for the stream
// once to read back the label checks, raising std::invalid_argument with the CPU's messages.
void AdaptHeadCuda(std::uintptr_t embeddings, std::uintptr_t labels, std::uintptr_t lr_weight,
                   std::uintptr_t lr_bias, std::uintptr_t weight, std::uintptr_t bias,
                   std::int64_t n, std::int64_t d, std::int64_t num_classes, std::int64_t steps,
                   double lr, double weight_decay, const std::string& init, std::uintptr_t stream);
#endif

}  // namespace metaedge
