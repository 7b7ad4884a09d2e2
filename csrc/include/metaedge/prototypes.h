// Class prototypes: the mean embedding of each class of a support set, optionally L2-normalised.
#pragma once

#include <cstdint>

namespace metaedge {

// Throws std::invalid_argument unless num_classes >= 1 and the (n, d) embeddings are non-empty.
void CheckPrototypesArgs(std::int64_t n, std::int64_t d, std::int64_t num_classes);
// The messages every backend uses, so that the Python errors read the same whichever one ran.
[[noreturn]] void ThrowLabelOutOfRange(std::int64_t index, std::int64_t label,
                                       std::int64_t num_classes);
[[noreturn]] void ThrowEmptyClass(std::int64_t cls);

// embeddings (n, d) float32, labels (n,) int64, out (num_classes, d) float32, all row-major host
// memory. out[k] = mean of the rows labelled k, divided by max(||mean||, 1e-12) if normalize.
// Checks every label before touching `out` (std::invalid_argument: out of range, empty class).
void PrototypesCpuKernel(const float* embeddings, const std::int64_t* labels, float* out,
                         std::int64_t n, std::int64_t d, std::int64_t num_classes, bool normalize);

#ifdef METAEDGE_WITH_CUDA
// Device pointers (as integers, from torch's data_ptr()): embeddings (n, d) float32, labels (n,)
// int64, out (num_classes, d) float32, all contiguous on one device; stream is a cudaStream_t.
// Enqueues the kernels on `stream`, then waits for it once to read back the label checks, and
// throws std::invalid_argument with the CPU's messages if a label is out of range or a class empty.
void PrototypesCuda(std::uintptr_t embeddings, std::uintptr_t labels, std::uintptr_t out,
                    std::int64_t n, std::int64_t d, std::int64_t num_classes, bool normalize,
                    std::uintptr_t stream);
#endif

}  // namespace metaedge
