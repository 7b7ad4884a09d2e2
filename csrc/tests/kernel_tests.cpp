// Native tests of the CPU kernels, without Python: every shared test vector (csrc/tests/vectors)
// recomputed here and held against the x86-64 results stored in it, and invariants that hold on
// any platform. The same executable, cross-compiled, runs under qemu-aarch64
// (scripts/test_aarch64.sh).
//   metaedge_kernel_tests VECTOR_DIR [GROUP...]   GROUP: prototypes logits adapt_head invariants
//   metaedge_kernel_tests --regenerate VECTOR_DIR  rewrites the vectors; on x86-64 only
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "metaedge/adapt_head.h"
#include "metaedge/logits.h"
#include "metaedge/prototypes.h"
#include "vector_file.h"

namespace metaedge::testing {
namespace {

// A result passes when |got - expected| <= kTolerance * max(1, |expected|): absolute for values
// up to 1 (probabilities, normalised prototypes, head weights), relative above (squared distances,
// scaled logits), where float32 itself resolves no better than 1e-7 of the value.
constexpr double kTolerance = 1e-5;

int failures = 0;

void Expect(bool ok, const std::string& what) {
  if (!ok) {
    ++failures;
    std::printf("  FAIL %s\n", what.c_str());
  }
}

const char* Platform() {
#if defined(__aarch64__) && defined(__ARM_FEATURE_SVE)
  return "aarch64, NEON + SVE";
#elif defined(__aarch64__)
  return "aarch64, NEON";
#elif defined(__x86_64__) && defined(__AVX512F__)
  return "x86-64, AVX-512";
#elif defined(__x86_64__) && defined(__AVX2__)
  return "x86-64, AVX2";
#elif defined(__x86_64__)
  return "x86-64, SSE2";
#else
  return "unknown architecture";
#endif
}

// ---- inputs ------------------------------------------------------------------------------------

// splitmix64, and floats made from 24 of its bits: the same inputs from any compiler and library
// (std::uniform_real_distribution is not specified bit for bit).
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : state_(seed) {}
  std::uint64_t Next() {
    std::uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float Uniform(float lo, float hi) {
    const float unit = static_cast<float>(Next() >> 40) * (1.0f / 16777216.0f);  // [0, 1)
    return lo + (hi - lo) * unit;
  }
  std::vector<float> Uniform(std::int64_t count, float lo, float hi) {
    std::vector<float> values(count);
    for (float& v : values) v = Uniform(lo, hi);
    return values;
  }

 private:
  std::uint64_t state_;
};

// counts[k] rows of class k, shuffled (Fisher-Yates): labels out of order, as an episode has them.
std::vector<std::int64_t> Labels(const std::vector<int>& counts, Rng& rng) {
  std::vector<std::int64_t> labels;
  for (std::size_t k = 0; k < counts.size(); ++k) labels.insert(labels.end(), counts[k], k);
  for (std::size_t i = labels.size(); i > 1; --i) std::swap(labels[i - 1], labels[rng.Next() % i]);
  return labels;
}

// Rows near their class's centre, so that the head has something to learn.
std::vector<float> Embeddings(const std::vector<std::int64_t>& labels, std::int64_t d,
                              std::int64_t c, Rng& rng) {
  const std::vector<float> centres = rng.Uniform(c * d, -1.0f, 1.0f);
  std::vector<float> x(labels.size() * d);
  for (std::size_t i = 0; i < labels.size(); ++i) {
    for (std::int64_t t = 0; t < d; ++t) {
      x[i * d + t] = centres[labels[i] * d + t] + rng.Uniform(-0.5f, 0.5f);
    }
  }
  return x;
}

std::string Text(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.9g", value);
  return buffer;
}

// ---- the cases: D is never a multiple of a SIMD width (4 NEON, 8 AVX2, 16 AVX-512 floats) ------

VectorFile PrototypesCase(const char* description, std::uint64_t seed, std::vector<int> counts,
                          std::int64_t d, bool normalize) {
  Rng rng(seed);
  VectorFile f;
  f.description = description;
  f.ints["labels"] = Labels(counts, rng);
  const auto n = static_cast<std::int64_t>(f.ints["labels"].size());
  const auto c = static_cast<std::int64_t>(counts.size());
  f.params = {{"kernel", "prototypes"},
              {"n", std::to_string(n)},
              {"d", std::to_string(d)},
              {"num_classes", std::to_string(c)},
              {"normalize", normalize ? "1" : "0"}};
  f.floats["embeddings"] = Embeddings(f.ints["labels"], d, c, rng);
  return f;
}

VectorFile LogitsCase(const char* description, std::uint64_t seed, std::int64_t m, std::int64_t c,
                      std::int64_t d, const char* metric, double scale, bool zero_query) {
  Rng rng(seed);
  VectorFile f;
  f.description = description;
  f.params = {{"kernel", "logits"},     {"m", std::to_string(m)}, {"c", std::to_string(c)},
              {"d", std::to_string(d)}, {"metric", metric},       {"scale", Text(scale)}};
  f.floats["queries"] = rng.Uniform(m * d, -1.0f, 1.0f);
  f.floats["prototypes"] = rng.Uniform(c * d, -1.0f, 1.0f);
  // An all-zero query: cosine divides by max(||q||, 1e-12), not by zero.
  if (zero_query) std::fill(f.floats["queries"].begin(), f.floats["queries"].begin() + d, 0.0f);
  return f;
}

struct HeadCase {
  std::vector<int> counts;
  std::int64_t d;
  std::int64_t steps;
  double lr;
  double weight_decay;
  const char* init;
  const char* form;
  bool lr_weight;  // per-parameter step sizes for W
  bool lr_bias;    // per-parameter step sizes for b
};

VectorFile AdaptHeadCase(const char* description, std::uint64_t seed, const HeadCase& h) {
  Rng rng(seed);
  VectorFile f;
  f.description = description;
  f.ints["labels"] = Labels(h.counts, rng);
  const auto n = static_cast<std::int64_t>(f.ints["labels"].size());
  const auto c = static_cast<std::int64_t>(h.counts.size());
  f.params = {{"kernel", "adapt_head"},
              {"n", std::to_string(n)},
              {"d", std::to_string(h.d)},
              {"num_classes", std::to_string(c)},
              {"steps", std::to_string(h.steps)},
              {"lr", Text(h.lr)},
              {"weight_decay", Text(h.weight_decay)},
              {"init", h.init},
              {"form", h.form}};
  f.floats["embeddings"] = Embeddings(f.ints["labels"], h.d, c, rng);
  // Step sizes spread over a range, as Meta-SGD learns them.
  if (h.lr_weight) f.floats["lr_weight"] = rng.Uniform(c * h.d, 0.05f, 0.4f);
  if (h.lr_bias) f.floats["lr_bias"] = rng.Uniform(c, 0.05f, 0.4f);
  return f;
}

struct Case {
  const char* name;  // the file is VECTOR_DIR/<name>.txt
  std::function<VectorFile()> make;
};

// A case's kernel is the start of its name.
std::string KernelOf(const std::string& name) {
  for (const char* kernel : {"prototypes", "logits", "adapt_head"}) {
    if (name.rfind(kernel, 0) == 0) return kernel;
  }
  throw std::logic_error("case " + name + " names no kernel");
}

std::vector<Case> Cases() {
  return {
      {"prototypes_normalized",
       [] {
         return PrototypesCase("prototypes, normalised, D=37, class 3 has one sample", 1,
                               {3, 2, 3, 1}, 37, true);
       }},
      {"prototypes_raw",
       [] {
         return PrototypesCase("prototypes, not normalised, D=5 (one past a NEON vector)", 2,
                               {7, 1, 4}, 5, false);
       }},
      {"logits_sqeuclidean",
       [] {
         return LogitsCase("logits, squared Euclidean, M=11 (past one 8-query tile), D=37", 3, 11,
                           4, 37, "sqeuclidean", 0.5, false);
       }},
      {"logits_sqeuclidean_d3",
       [] {
         return LogitsCase("logits, squared Euclidean, D=3 (less than one SIMD vector)", 4, 5, 3, 3,
                           "sqeuclidean", 1.0, false);
       }},
      {"logits_cosine",
       [] {
         return LogitsCase("logits, cosine, scale 10, D=37, query 0 all zeros", 5, 11, 4, 37,
                           "cosine", 10.0, true);
       }},
      {"adapt_head_per_parameter",
       [] {
         return AdaptHeadCase(
             "adapt_head, primal, per-parameter step sizes for W and b, weight decay 0.01, "
             "prototype init, D=37, class 3 has one sample",
             6, {{4, 3, 5, 1}, 37, 25, 0.1, 0.01, "prototypes", "primal", true, true});
       }},
      {"adapt_head_lr_weight_only",
       [] {
         return AdaptHeadCase(
             "adapt_head, auto form, per-parameter step sizes for W only (b takes lr), "
             "weight decay 0.02, zero init, D=29",
             7, {{3, 3, 3, 3, 3}, 29, 40, 0.15, 0.02, "zeros", "auto", true, false});
       }},
      {"adapt_head_primal",
       [] {
         return AdaptHeadCase(
             "adapt_head, primal, lr 0.2, weight decay 0.05, prototype init, D=130 (two K "
             "slices of 128 in the forward GEMM), class 4 has one sample",
             8, {{3, 2, 3, 2, 1}, 130, 30, 0.2, 0.05, "prototypes", "primal", false, false});
       }},
      {"adapt_head_dual",
       [] {
         return AdaptHeadCase(
             "adapt_head, dual, lr 0.2, weight decay 0.05, prototype init, D=37, class 0 has one "
             "sample",
             10, {{1, 3, 4, 3, 2}, 37, 30, 0.2, 0.05, "prototypes", "dual", false, false});
       }},
      {"adapt_head_dual_zeros",
       [] {
         return AdaptHeadCase("adapt_head, dual, zero init, no weight decay, D=21", 9,
                              {{2, 5, 1, 3}, 21, 60, 0.3, 0.0, "zeros", "dual", false, false});
       }},
  };
}

// ---- running a vector file ---------------------------------------------------------------------

// The kernel call a file describes, on its stored inputs: its outputs under their expected_* names.
std::map<std::string, std::vector<float>> Run(const VectorFile& f) {
  const std::string& kernel = f.Param("kernel");
  if (kernel == "prototypes") {
    const std::int64_t n = f.Int("n"), d = f.Int("d"), c = f.Int("num_classes");
    std::vector<float> out(c * d);
    PrototypesCpuKernel(f.Floats("embeddings").data(), f.Ints("labels").data(), out.data(), n, d, c,
                        f.Int("normalize") != 0);
    return {{"expected", out}};
  }
  if (kernel == "logits") {
    const std::int64_t m = f.Int("m"), c = f.Int("c"), d = f.Int("d");
    std::vector<float> out(m * c);
    LogitsCpuKernel(f.Floats("queries").data(), f.Floats("prototypes").data(), out.data(), m, c, d,
                    ParseMetric(f.Param("metric")), static_cast<float>(f.Real("scale")));
    return {{"expected", out}};
  }
  if (kernel == "adapt_head") {
    const std::int64_t n = f.Int("n"), d = f.Int("d"), c = f.Int("num_classes");
    AdaptHeadOptions options;
    options.steps = f.Int("steps");
    options.lr = static_cast<float>(f.Real("lr"));
    options.weight_decay = static_cast<float>(f.Real("weight_decay"));
    options.init = ParseHeadInit(f.Param("init"));
    options.form = ParseHeadForm(f.Param("form"));
    std::vector<float> weight(c * d);
    std::vector<float> bias(c);
    AdaptHeadCpuKernel(f.Floats("embeddings").data(), f.Ints("labels").data(),
                       f.FloatsOrNull("lr_weight"), f.FloatsOrNull("lr_bias"), weight.data(),
                       bias.data(), n, d, c, options);
    return {{"expected_weight", weight}, {"expected_bias", bias}};
  }
  throw std::runtime_error("unknown kernel '" + kernel + "'");
}

struct Difference {
  double max_abs = 0.0;
  double max_rel = 0.0;  // |got - expected| / max(1, |expected|), the quantity held to kTolerance
  std::size_t values = 0;
};

Difference Compare(const std::vector<float>& got, const std::vector<float>& expected,
                   const std::string& what) {
  Difference diff;
  if (got.size() != expected.size()) {
    Expect(false, what + ": " + std::to_string(got.size()) + " values, expected " +
                      std::to_string(expected.size()));
    return diff;
  }
  diff.values = got.size();
  std::size_t worst = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    const double abs = std::fabs(static_cast<double>(got[i]) - expected[i]);
    const double rel = abs / std::max(1.0, std::fabs(static_cast<double>(expected[i])));
    diff.max_abs = std::max(diff.max_abs, abs);
    // NaN compares false everywhere: make it the worst value rather than a silent pass.
    if (!(rel <= diff.max_rel)) {
      diff.max_rel = std::isnan(rel) ? INFINITY : rel;
      worst = i;
    }
  }
  Expect(diff.max_rel <= kTolerance, what + "[" + std::to_string(worst) + "] = " +
                                         Text(got[worst]) + ", expected " + Text(expected[worst]));
  return diff;
}

// ---- invariants: properties that need no stored numbers ----------------------------------------

template <class Fn>
void ExpectThrows(Fn&& fn, const std::string& message, const std::string& what) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    Expect(e.what() == message, what + ": message '" + e.what() + "', expected '" + message + "'");
    return;
  }
  Expect(false, what + ": no std::invalid_argument");
}

double MaxAbsDifference(const std::vector<float>& a, const std::vector<float>& b) {
  double worst = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double diff = std::fabs(static_cast<double>(a[i]) - b[i]);
    worst = std::isnan(diff) ? INFINITY : std::max(worst, diff);
  }
  return worst;
}

struct Head {
  std::vector<float> weight;
  std::vector<float> bias;
};

Head AdaptHead(const std::vector<float>& x, const std::vector<std::int64_t>& labels, std::int64_t d,
               std::int64_t c, const AdaptHeadOptions& options, const float* lr_weight = nullptr,
               const float* lr_bias = nullptr) {
  Head head{std::vector<float>(c * d), std::vector<float>(c)};
  AdaptHeadCpuKernel(x.data(), labels.data(), lr_weight, lr_bias, head.weight.data(),
                     head.bias.data(), static_cast<std::int64_t>(labels.size()), d, c, options);
  return head;
}

int Invariants() {
  const int before = failures;
  Rng rng(100);

  // Prototypes: a one-sample class is that sample, normalised; a raw mean is the mean.
  {
    const std::int64_t d = 37, c = 3;
    const std::vector<std::int64_t> labels = {0, 1, 0, 2, 1};
    const std::vector<float> x = Embeddings(labels, d, c, rng);
    std::vector<float> normalized(c * d), raw(c * d);
    PrototypesCpuKernel(x.data(), labels.data(), normalized.data(), 5, d, c, true);
    PrototypesCpuKernel(x.data(), labels.data(), raw.data(), 5, d, c, false);
    double norm = 0.0;
    for (std::int64_t t = 0; t < d; ++t) norm += double{x[3 * d + t]} * x[3 * d + t];
    norm = std::sqrt(norm);
    double worst_one = 0.0, worst_mean = 0.0;
    for (std::int64_t t = 0; t < d; ++t) {
      worst_one = std::max(worst_one, std::fabs(normalized[2 * d + t] - x[3 * d + t] / norm));
      const double mean = (double{x[0 * d + t]} + x[2 * d + t]) / 2.0;
      worst_mean = std::max(worst_mean, std::fabs(raw[0 * d + t] - mean));
    }
    Expect(worst_one <= 1e-6, "one-sample prototype is the sample normalised: " + Text(worst_one));
    Expect(worst_mean <= 1e-6, "raw prototype is the class mean: " + Text(worst_mean));
  }

  // Logits: a query on its prototype is at distance 0; cosine is blind to length.
  {
    const std::int64_t d = 37;
    const std::vector<float> p = rng.Uniform(d, -1.0f, 1.0f);
    std::vector<float> q(p);
    for (float& v : q) v *= 3.0f;
    float distance = 1.0f, cosine = 0.0f;
    LogitsCpuKernel(p.data(), p.data(), &distance, 1, 1, d, Metric::kSqEuclidean, 2.0f);
    LogitsCpuKernel(q.data(), p.data(), &cosine, 1, 1, d, Metric::kCosine, 10.0f);
    Expect(distance == 0.0f, "sqeuclidean logit of a prototype with itself: " + Text(distance));
    Expect(std::fabs(cosine - 10.0f) <= 1e-5f * 10.0f,
           "cosine logit of 3p with p, scale 10: " + Text(cosine));
  }

  // adapt_head: the primal and dual forms take the same steps; per-parameter step sizes all equal
  // to lr are the scalar lr; 0 steps leaves the initial head.
  {
    const std::int64_t d = 45, c = 4;
    const std::vector<std::int64_t> labels = Labels({5, 5, 1, 5}, rng);
    const std::vector<float> x = Embeddings(labels, d, c, rng);
    AdaptHeadOptions options;
    options.steps = 40;
    options.lr = 0.25f;
    options.weight_decay = 0.03f;
    options.form = HeadForm::kPrimal;
    const Head primal = AdaptHead(x, labels, d, c, options);
    options.form = HeadForm::kDual;
    const Head dual = AdaptHead(x, labels, d, c, options);
    const double form_diff = std::max(MaxAbsDifference(primal.weight, dual.weight),
                                      MaxAbsDifference(primal.bias, dual.bias));
    Expect(form_diff <= 1e-5, "primal and dual forms agree: " + Text(form_diff));

    options.form = HeadForm::kPrimal;
    const std::vector<float> lr_weight(c * d, options.lr), lr_bias(c, options.lr);
    const Head per_parameter =
        AdaptHead(x, labels, d, c, options, lr_weight.data(), lr_bias.data());
    const double lr_diff = std::max(MaxAbsDifference(primal.weight, per_parameter.weight),
                                    MaxAbsDifference(primal.bias, per_parameter.bias));
    Expect(lr_diff <= 1e-6, "per-parameter step sizes equal to lr are lr: " + Text(lr_diff));

    options.steps = 0;
    const Head initial = AdaptHead(x, labels, d, c, options);
    std::vector<float> prototypes(c * d);
    PrototypesCpuKernel(x.data(), labels.data(), prototypes.data(),
                        static_cast<std::int64_t>(labels.size()), d, c, true);
    Expect(initial.weight == prototypes && initial.bias == std::vector<float>(c, 0.0f),
           "0 steps leaves W = the normalised prototypes, b = 0");
  }

  // Argument errors: the messages every backend (and the Python API) uses.
  {
    const std::vector<float> x(4 * 3, 1.0f);
    std::vector<float> out(3 * 3), bias(3);
    const std::vector<std::int64_t> bad = {0, 1, 7, 2}, gap = {0, 2, 2, 0};
    ExpectThrows([&] { PrototypesCpuKernel(x.data(), bad.data(), out.data(), 4, 3, 3, true); },
                 "labels[2] = 7 is out of range for num_classes=3", "label out of range");
    ExpectThrows([&] { PrototypesCpuKernel(x.data(), gap.data(), out.data(), 4, 3, 3, true); },
                 "class 1 has no samples", "empty class");
    const std::vector<std::int64_t> labels = {0, 1, 2, 2};
    const std::vector<float> lr_weight(3 * 3, 0.1f);
    AdaptHeadOptions options;
    options.form = HeadForm::kDual;
    ExpectThrows(
        [&] {
          AdaptHeadCpuKernel(x.data(), labels.data(), lr_weight.data(), nullptr, out.data(),
                             bias.data(), 4, 3, 3, options);
        },
        "form='dual' needs the scalar weight step size (lr_weight=None)", "dual with lr_weight");
    std::vector<float> nan_lr(3 * 3, 0.1f);
    nan_lr[4] = NAN;
    options.form = HeadForm::kAuto;
    ExpectThrows(
        [&] {
          AdaptHeadCpuKernel(x.data(), labels.data(), nan_lr.data(), nullptr, out.data(),
                             bias.data(), 4, 3, 3, options);
        },
        "lr_weight must hold finite numbers", "non-finite lr_weight");
  }

#ifdef _OPENMP
  // Past their work thresholds the kernels share out the work; every output must still be summed
  // in one fixed order, so any thread count gives the same bits.
  {
    const int threads = std::max(2, omp_get_max_threads());
    const std::int64_t d = 256, c = 20;
    const std::vector<std::int64_t> labels = Labels(std::vector<int>(c, 3), rng);  // n = 60
    const auto n = static_cast<std::int64_t>(labels.size());
    const std::vector<float> x = Embeddings(labels, d, c, rng);
    const std::vector<float> queries = rng.Uniform(64 * d, -1.0f, 1.0f);
    AdaptHeadOptions options;
    options.steps = 5;
    options.weight_decay = 0.01f;
    auto run_all = [&] {
      std::vector<std::vector<float>> results;
      for (const HeadForm form : {HeadForm::kPrimal, HeadForm::kDual}) {
        options.form = form;
        const Head head = AdaptHead(x, labels, d, c, options);
        results.push_back(head.weight);
        results.push_back(head.bias);
      }
      std::vector<float> logits(64 * c);
      LogitsCpuKernel(queries.data(), results[0].data(), logits.data(), 64, c, d, Metric::kCosine,
                      10.0f);
      results.push_back(logits);
      std::vector<float> prototypes(c * d);
      PrototypesCpuKernel(x.data(), labels.data(), prototypes.data(), n, d, c, true);
      results.push_back(prototypes);
      return results;
    };
    omp_set_num_threads(1);
    const auto one = run_all();
    omp_set_num_threads(threads);
    const auto many = run_all();
    Expect(one == many, "1 and " + std::to_string(threads) + " OpenMP threads give the same bits");
  }
#endif

  return failures - before;
}

// ---- the two modes -----------------------------------------------------------------------------

int Regenerate(const std::string& dir) {
#if !defined(__x86_64__)
  std::printf("refusing to regenerate on %s: the stored results are the x86-64 ones\n", Platform());
  return 2;
#endif
  for (const Case& c : Cases()) {
    VectorFile f = c.make();
    for (auto& [key, values] : Run(f)) f.floats[key] = std::move(values);
    const std::string path = dir + "/" + c.name + ".txt";
    WriteVectorFile(path, f);
    std::printf("wrote %s\n", path.c_str());
  }
  return 0;
}

int Check(const std::string& dir, const std::vector<std::string>& groups) {
  auto wanted = [&](const std::string& group) {
    return groups.empty() || std::find(groups.begin(), groups.end(), group) != groups.end();
  };
  std::printf("metaedge kernel tests, built for %s\n", Platform());
  Difference total;
  int cases = 0;
  for (const Case& c : Cases()) {
    const std::string name = c.name;
    if (!wanted(KernelOf(name))) continue;
    const int before = failures;
    Difference diff;
    try {
      const VectorFile f = ReadVectorFile(dir + "/" + name + ".txt");
      Expect(f.Param("kernel") == KernelOf(name),
             name + ": holds a " + f.Param("kernel") + " call");
      for (const auto& [key, got] : Run(f)) {
        const Difference d = Compare(got, f.Floats(key), name + " " + key);
        diff.max_abs = std::max(diff.max_abs, d.max_abs);
        diff.max_rel = std::max(diff.max_rel, d.max_rel);
        diff.values += d.values;
      }
    } catch (const std::exception& e) {
      Expect(false, name + ": " + e.what());
    }
    ++cases;
    std::printf("  %s %-28s %4zu values, max |diff| %.2e, max |diff| / max(1, |expected|) %.2e\n",
                failures == before ? "ok  " : "FAIL", name.c_str(), diff.values, diff.max_abs,
                diff.max_rel);
    total.max_abs = std::max(total.max_abs, diff.max_abs);
    total.max_rel = std::max(total.max_rel, diff.max_rel);
    total.values += diff.values;
  }
  if (cases > 0) {
    std::printf("vectors: %d cases, %zu values, max |diff| %.2e, max relative %.2e (limit %.0e)\n",
                cases, total.values, total.max_abs, total.max_rel, kTolerance);
  }
  if (wanted("invariants")) {
    const int failed = Invariants();
    std::printf("invariants: %s\n", failed == 0 ? "ok" : "FAILED");
  }
  std::printf("%s\n", failures == 0 ? "PASSED" : "FAILED");
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace metaedge::testing

int main(int argc, char** argv) {
  using metaedge::testing::Check;
  using metaedge::testing::Regenerate;
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 2 && args[0] == "--regenerate") return Regenerate(args[1]);
  if (args.empty() || args[0].rfind("--", 0) == 0) {
    std::printf(
        "usage: %s VECTOR_DIR [prototypes|logits|adapt_head|invariants ...]\n"
        "       %s --regenerate VECTOR_DIR   (x86-64 only)\n",
        argv[0], argv[0]);
    return 2;
  }
  try {
    return Check(args[0], std::vector<std::string>(args.begin() + 1, args.end()));
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    return 1;
  }
}
