// CPU class prototypes: the numpy front end of PrototypesCpuKernel.

#include "metaedge/prototypes.h"
#include "metaedge/python.h"

namespace metaedge {

py::array_t<float> PrototypesCpu(const FloatArray& embeddings, const LabelArray& labels,
                                 std::int64_t num_classes, bool normalize) {
  const auto [n, d] = CheckSupportSet(embeddings, labels);
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
