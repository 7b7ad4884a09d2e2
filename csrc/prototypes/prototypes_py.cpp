// CPU class prototypes: the numpy front end of PrototypesCpuKernel.
#include <stdexcept>
#include <string>

#include "metaedge/prototypes.h"
#include "metaedge/python.h"

namespace metaedge {

py::array_t<float> PrototypesCpu(const FloatArray& embeddings, const LabelArray& labels,
                                 std::int64_t num_classes, bool normalize) {
  if (embeddings.ndim() != 2) {
    throw std::invalid_argument("embeddings must be 2-D (N, D), got shape " +
                                ShapeString(embeddings));
  }
  if (labels.ndim() != 1) {
    throw std::invalid_argument("labels must be 1-D (N,), got shape " + ShapeString(labels));
  }
  const std::int64_t n = embeddings.shape(0);
  const std::int64_t d = embeddings.shape(1);
  if (labels.shape(0) != n) {
    throw std::invalid_argument("embeddings has " + std::to_string(n) + " rows but labels has " +
                                std::to_string(labels.shape(0)) + " entries");
  }
  CheckPrototypesArgs(n, d, num_classes);

  py::array_t<float> out({num_classes, d});
  const float* embeddings_ptr = embeddings.data();
  const std::int64_t* labels_ptr = labels.data();
  float* out_ptr = out.mutable_data();
  {
    py::gil_scoped_release release;
    PrototypesCpuKernel(embeddings_ptr, labels_ptr, out_ptr, n, d, num_classes, normalize);
  }
  return out;
}

}  // namespace metaedge
