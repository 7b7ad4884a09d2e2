// CPU head adaptation: the numpy front end of AdaptHeadCpuKernel.
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>

#include "metaedge/adapt_head.h"
#include "metaedge/prototypes.h"
#include "metaedge/python.h"

namespace metaedge {

std::pair<py::array_t<float>, py::array_t<float>> AdaptHeadCpu(
    const FloatArray& embeddings, const LabelArray& labels, std::int64_t num_classes,
    std::int64_t steps, double lr, double weight_decay, const std::string& init,
    const std::optional<FloatArray>& lr_weight, const std::optional<FloatArray>& lr_bias,
    const std::string& form) {
  AdaptHeadOptions options;
  options.init = ParseHeadInit(init);
  options.form = ParseHeadForm(form);
  CheckAdaptHeadScalars(steps, lr, weight_decay);
  options.steps = steps;
  options.lr = static_cast<float>(lr);
  options.weight_decay = static_cast<float>(weight_decay);
  const auto [n, d] = CheckSupportSet(embeddings, labels);
  CheckPrototypesArgs(n, d, num_classes);
  const std::string c_str = std::to_string(num_classes);
  if (lr_weight &&
      (lr_weight->ndim() != 2 || lr_weight->shape(0) != num_classes || lr_weight->shape(1) != d)) {
    throw std::invalid_argument("lr_weight must have shape (C, D) = (" + c_str + ", " +
                                std::to_string(d) + "), got " + ShapeString(*lr_weight));
  }
  if (lr_bias && (lr_bias->ndim() != 1 || lr_bias->shape(0) != num_classes)) {
    throw std::invalid_argument("lr_bias must have shape (C,) = (" + c_str + ",), got " +
                                ShapeString(*lr_bias));
  }

  py::array_t<float> weight({num_classes, d});
  py::array_t<float> bias(num_classes);
  const float* embeddings_ptr = embeddings.data();
  const std::int64_t* labels_ptr = labels.data();
  const float* lr_weight_ptr = lr_weight ? lr_weight->data() : nullptr;
  const float* lr_bias_ptr = lr_bias ? lr_bias->data() : nullptr;
  float* weight_ptr = weight.mutable_data();
  float* bias_ptr = bias.mutable_data();
  {
    py::gil_scoped_release release;
    AdaptHeadCpuKernel(embeddings_ptr, labels_ptr, lr_weight_ptr, lr_bias_ptr, weight_ptr, bias_ptr,
                       n, d, num_classes, options);
  }
  return {weight, bias};
}

}  // namespace metaedge
