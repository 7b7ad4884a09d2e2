// metaedge._C: registers the native kernels with Python. Kernels live in csrc/<kernel>/.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>  // std::optional arguments (adapt_head_cpu's step sizes)

#ifdef METAEDGE_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#include "metaedge/adapt_head.h"
#include "metaedge/logits.h"
#include "metaedge/prototypes.h"
#include "metaedge/python.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() =
      "Native kernels of metaedge (call them through metaedge.kernels, which converts and checks "
      "inputs). Argument errors raise ValueError.";

  m.def("prototypes_cpu", &metaedge::PrototypesCpu, py::arg("embeddings"), py::arg("labels"),
        py::arg("num_classes"), py::arg("normalize"),
        "embeddings (N, D) float32, labels (N,) int64 in [0, num_classes) -> (num_classes, D) "
        "float32 class means, L2-normalised if normalize.");
  m.def("logits_cpu", &metaedge::LogitsCpu, py::arg("queries"), py::arg("prototypes"),
        py::arg("metric"), py::arg("scale"),
        "queries (M, D), prototypes (C, D) float32 -> (M, C) float32: -scale * ||q - p||^2 "
        "(metric='sqeuclidean') or scale * cos(q, p) (metric='cosine').");
  m.def("adapt_head_cpu", &metaedge::AdaptHeadCpu, py::arg("embeddings"), py::arg("labels"),
        py::arg("num_classes"), py::arg("steps"), py::arg("lr"), py::arg("weight_decay"),
        py::arg("init"), py::arg("lr_weight") = py::none(), py::arg("lr_bias") = py::none(),
        py::arg("form") = "auto",
        "embeddings (N, D) float32, labels (N,) int64 in [0, num_classes), optional lr_weight "
        "(C, D) and lr_bias (C,) float32 -> (weight (C, D), bias (C,)) float32: `steps` steps of "
        "full-batch gradient descent on a linear softmax head from init='prototypes' or 'zeros'. "
        "form='auto' | 'primal' | 'dual' picks how W is carried (same iterates).");

#ifdef METAEDGE_WITH_CUDA
  m.def("cuda_built", [] { return true; }, "True: this build has the CUDA kernels.");
  m.def(
      "cuda_device_count",
      [] {
        int count = 0;
        // No driver or no GPU is an answer (0), not an error; clear it so it cannot resurface.
        if (cudaGetDeviceCount(&count) != cudaSuccess) {
          cudaGetLastError();
          return 0;
        }
        return count;
      },
      "Number of CUDA devices visible to this process; 0 without a GPU or a driver.");
  m.def(
      "prototypes_cuda", &metaedge::PrototypesCuda, py::arg("embeddings"), py::arg("labels"),
      py::arg("out"), py::arg("n"), py::arg("d"), py::arg("num_classes"), py::arg("normalize"),
      py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
      "Device pointers: embeddings (n, d) float32, labels (n,) int64, out (num_classes, d) "
      "float32, contiguous, one device; stream a cudaStream_t. Waits for the stream once to check "
      "the labels.");
  m.def("logits_cuda", &metaedge::LogitsCuda, py::arg("queries"), py::arg("prototypes"),
        py::arg("out"), py::arg("m"), py::arg("c"), py::arg("d"), py::arg("metric"),
        py::arg("scale"), py::arg("stream"), py::call_guard<py::gil_scoped_release>(),
        "Device pointers: queries (m, d), prototypes (c, d), out (m, c), float32, contiguous, one "
        "device; stream a cudaStream_t. Asynchronous.");
  m.def("adapt_head_cuda", &metaedge::AdaptHeadCuda, py::arg("embeddings"), py::arg("labels"),
        py::arg("lr_weight"), py::arg("lr_bias"), py::arg("weight"), py::arg("bias"), py::arg("n"),
        py::arg("d"), py::arg("num_classes"), py::arg("steps"), py::arg("lr"),
        py::arg("weight_decay"), py::arg("init"), py::arg("stream"),
        py::call_guard<py::gil_scoped_release>(),
        "Device pointers: embeddings (n, d) float32, labels (n,) int64, lr_weight (C, d) and "
        "lr_bias (C,) float32 or 0, weight (C, d) and bias (C,) float32 outputs, contiguous, one "
        "device; stream a cudaStream_t. Waits for the stream once to check the labels.");
#else
  m.def("cuda_built", [] { return false; }, "False: this build has no CUDA kernels.");
#endif
}
