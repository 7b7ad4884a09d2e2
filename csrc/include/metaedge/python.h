// The numpy front ends of the CPU kernels, registered by extension.cpp. The kernels themselves
// (metaedge/<kernel>.h) know nothing of Python, so that the native tests and the cross builds
// compile them without Python or pybind11.
#pragma once

#include <pybind11/numpy.h>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

namespace metaedge {

namespace py = pybind11;

// forcecast: pybind11 converts other dtypes and layouts itself, so a direct caller cannot hand the
// kernel a strided or float64 buffer; metaedge.kernels converts once beforehand, so none is made.
using FloatArray = py::array_t<float, py::array::c_style | py::array::forcecast>;
using LabelArray = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;

// Python's repr of a shape tuple, so that the messages match the ones raised in Python.
inline std::string ShapeString(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) {
    s += (i ? ", " : "") + std::to_string(a.shape(i));
  }
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// A support set as the kernels take it: embeddings (N, D) and one label per row. Returns {N, D};
// throws std::invalid_argument (Python's ValueError) naming the offending shape.
inline std::pair<std::int64_t, std::int64_t> CheckSupportSet(const FloatArray& embeddings,
                                                             const LabelArray& labels) {
  if (embeddings.ndim() != 2) {
    throw std::invalid_argument("embeddings must be 2-D (N, D), got shape " +
                                ShapeString(embeddings));
  }
  if (labels.ndim() != 1) {
    throw std::invalid_argument("labels must be 1-D (N,), got shape " + ShapeString(labels));
  }
  const std::int64_t n = embeddings.shape(0);
  if (labels.shape(0) != n) {
    throw std::invalid_argument("embeddings has " + std::to_string(n) + " rows but labels has " +
                                std::to_string(labels.shape(0)) + " entries");
  }
  return {n, embeddings.shape(1)};
}

// PrototypesCpuKernel: embeddings (N, D) float32, labels (N,) int64 -> (num_classes, D) float32.
// Checks shapes, then computes with the GIL released.
py::array_t<float> PrototypesCpu(const FloatArray& embeddings, const LabelArray& labels,
                                 std::int64_t num_classes, bool normalize);

// LogitsCpuKernel: queries (M, D), prototypes (C, D) -> (M, C) float32. Checks arguments, then
// computes with the GIL released.
py::array_t<float> LogitsCpu(const FloatArray& queries, const FloatArray& prototypes,
                             const std::string& metric, double scale);

// AdaptHeadCpuKernel: embeddings (N, D) float32, labels (N,) int64, optional lr_weight (C, D) and
// lr_bias (C,) float32 -> (weight (C, D), bias (C,)) float32. Checks shapes and scalars, then
// computes with the GIL released.
std::pair<py::array_t<float>, py::array_t<float>> AdaptHeadCpu(
    const FloatArray& embeddings, const LabelArray& labels, std::int64_t num_classes,
    std::int64_t steps, double lr, double weight_decay, const std::string& init,
    const std::optional<FloatArray>& lr_weight, const std::optional<FloatArray>& lr_bias,
    const std::string& form);

}  // namespace metaedge
