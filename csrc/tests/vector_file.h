// Test-vector files: the parameters, inputs and expected outputs of one kernel call, as text that
// reads the same on every platform (format: csrc/tests/vectors/README.md).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace metaedge::testing {

struct VectorFile {
  std::string description;  // the "# ..." line under the header
  // kernel, metric, n, scale, ...: one token each.
  std::map<std::string, std::string> params;
  // f32 arrays: the inputs, and the outputs under expected_* names.
  std::map<std::string, std::vector<float>> floats;
  // i64 arrays: labels.
  std::map<std::string, std::vector<std::int64_t>> ints;

  // Throw std::runtime_error naming the key when it is absent (or not a number).
  const std::string& Param(const std::string& key) const;
  std::int64_t Int(const std::string& key) const;
  double Real(const std::string& key) const;
  const std::vector<float>& Floats(const std::string& key) const;
  const std::vector<std::int64_t>& Ints(const std::string& key) const;
  // nullptr when the file has no such array (an optional input such as lr_bias).
  const float* FloatsOrNull(const std::string& key) const;
};

// Throw std::runtime_error, with the path, on a file that cannot be read or does not parse.
VectorFile ReadVectorFile(const std::string& path);
// Floats as %.9g, which reads back to the same float32 bits.
void WriteVectorFile(const std::string& path, const VectorFile& file);

}  // namespace metaedge::testing
