// CPU logits: the numpy front end of LogitsCpuKernel.
#include <stdexcept>
#include <string>

#include "metaedge/logits.h"
#include "metaedge/python.h"

namespace metaedge {

py::array_t<float> LogitsCpu(const FloatArray& queries, const FloatArray& prototypes,
                             const std::string& metric, double scale) {
  const Metric parsed = ParseMetric(metric);
  CheckLogitsArgs(0, 1, 1, scale);  // scale only; the shapes are checked below, in message order
  if (queries.ndim() != 2) {
    throw std::invalid_argument("queries must be 2-D (M, D), got shape " + ShapeString(queries));
  }
  if (prototypes.ndim() != 2) {
    throw std::invalid_argument("prototypes must be 2-D (C, D), got shape " +
                                ShapeString(prototypes));
  }
  const std::int64_t m = queries.shape(0);
  const std::int64_t c = prototypes.shape(0);
  const std::int64_t d = prototypes.shape(1);
  if (queries.shape(1) != d) {
    throw std::invalid_argument("queries has D=" + std::to_string(queries.shape(1)) +
                                " features but prototypes has D=" + std::to_string(d));
  }
  CheckLogitsArgs(m, c, d, scale);

  py::array_t<float> out({m, c});
  const float* queries_ptr = queries.data();
  const float* prototypes_ptr = prototypes.data();
  float* out_ptr = out.mutable_data();
  {
    py::gil_scoped_release release;
    LogitsCpuKernel(queries_ptr, prototypes_ptr, out_ptr, m, c, d, parsed,
                    static_cast<float>(scale));
  }
  return out;
}

}  // namespace metaedge
