// Reads and writes the test-vector text format: "key value" lines, then "name f32|i64 count"
// headers each followed by count whitespace-separated values; "#" starts a comment line.
#include "vector_file.h"

#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <stdexcept>

namespace metaedge::testing {
namespace {

constexpr const char* kHeader = "# metaedge kernel test vector (csrc/tests/vectors/README.md)";
constexpr int kValuesPerLine = 8;

[[noreturn]] void Fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what);
}

template <class Map>
const typename Map::mapped_type& Lookup(const Map& map, const std::string& key, const char* kind) {
  const auto it = map.find(key);
  if (it == map.end()) throw std::runtime_error(std::string("no ") + kind + " '" + key + "'");
  return it->second;
}

}  // namespace

const std::string& VectorFile::Param(const std::string& key) const {
  return Lookup(params, key, "parameter");
}

std::int64_t VectorFile::Int(const std::string& key) const {
  const std::string& text = Param(key);
  char* end = nullptr;
  const long long value = std::strtoll(text.c_str(), &end, 10);
  if (*end != '\0') throw std::runtime_error("parameter '" + key + "' is not an integer: " + text);
  return value;
}

double VectorFile::Real(const std::string& key) const {
  const std::string& text = Param(key);
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (*end != '\0') throw std::runtime_error("parameter '" + key + "' is not a number: " + text);
  return value;
}

const std::vector<float>& VectorFile::Floats(const std::string& key) const {
  return Lookup(floats, key, "f32 array");
}

const std::vector<std::int64_t>& VectorFile::Ints(const std::string& key) const {
  return Lookup(ints, key, "i64 array");
}

const float* VectorFile::FloatsOrNull(const std::string& key) const {
  const auto it = floats.find(key);
  return it == floats.end() ? nullptr : it->second.data();
}

VectorFile ReadVectorFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) Fail(path, "cannot open");
  VectorFile file;
  std::ostringstream body;  // every non-comment line, as one token stream
  std::string line;
  bool first_comment = true;
  while (std::getline(in, line)) {
    if (!line.empty() && line[0] == '#') {
      if (line != kHeader && first_comment) {
        file.description = line.substr(line.size() > 1 && line[1] == ' ' ? 2 : 1);
        first_comment = false;
      }
      continue;
    }
    body << line << '\n';
  }
  std::istringstream tokens(body.str());
  std::string key;
  std::string value;
  while (tokens >> key) {
    if (!(tokens >> value)) Fail(path, "'" + key + "' has no value");
    if (value != "f32" && value != "i64") {
      file.params[key] = value;
      continue;
    }
    long long count = -1;
    if (!(tokens >> count) || count < 0) Fail(path, "array '" + key + "' has no valid count");
    std::string number;
    for (long long i = 0; i < count; ++i) {
      if (!(tokens >> number)) Fail(path, "array '" + key + "' ends after " + std::to_string(i));
      char* end = nullptr;
      if (value == "f32") {
        // strtof rounds the decimal text to the nearest float, as the %.9g that wrote it intends.
        file.floats[key].push_back(std::strtof(number.c_str(), &end));
      } else {
        file.ints[key].push_back(std::strtoll(number.c_str(), &end, 10));
      }
      if (*end != '\0') Fail(path, "array '" + key + "': bad value '" + number + "'");
    }
    if (count == 0) {  // present but empty, so that a lookup still finds it
      if (value == "f32") file.floats[key];
      if (value == "i64") file.ints[key];
    }
  }
  return file;
}

void WriteVectorFile(const std::string& path, const VectorFile& file) {
  std::FILE* out = std::fopen(path.c_str(), "w");
  if (!out) Fail(path, "cannot write");
  std::fprintf(out, "%s\n", kHeader);
  if (!file.description.empty()) std::fprintf(out, "# %s\n", file.description.c_str());
  // The kernel first, so that a reader sees at once which call the file holds.
  std::fprintf(out, "kernel %s\n", file.Param("kernel").c_str());
  for (const auto& [key, value] : file.params) {
    if (key != "kernel") std::fprintf(out, "%s %s\n", key.c_str(), value.c_str());
  }
  auto write_values = [out](const auto& values, auto print) {
    for (std::size_t i = 0; i < values.size(); ++i) {
      print(values[i]);
      std::fputc((i + 1) % kValuesPerLine == 0 || i + 1 == values.size() ? '\n' : ' ', out);
    }
  };
  for (const auto& [key, values] : file.ints) {
    std::fprintf(out, "%s i64 %zu\n", key.c_str(), values.size());
    write_values(values, [out](std::int64_t v) { std::fprintf(out, "%" PRId64, v); });
  }
  // Inputs before expected outputs: the same order a reader follows the call in.
  for (const bool expected : {false, true}) {
    for (const auto& [key, values] : file.floats) {
      if ((key.rfind("expected", 0) == 0) != expected) continue;
      std::fprintf(out, "%s f32 %zu\n", key.c_str(), values.size());
      write_values(values, [out](float v) { std::fprintf(out, "%.9g", static_cast<double>(v)); });
    }
  }
  if (std::fclose(out) != 0) Fail(path, "write failed");
}

}  // namespace metaedge::testing
