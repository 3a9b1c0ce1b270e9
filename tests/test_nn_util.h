// Helpers of the nn tests: the golden files of tests/golden and small module fixtures.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "core/gradcheck.h"
#include "data/h5file.h"
#include "nn/compressor.h"
#include "nn/module.h"
#include "test_util.h"

namespace kvc::test {

inline std::string golden_dir() { return std::string(KVC_SOURCE_DIR) + "/tests/golden"; }

// The golden files whose name starts with `prefix` ("pair_" or "" for all), sorted. Layer
// goldens are every file except pair_* and optim.h5.
inline std::vector<std::string> golden_files(bool pairs) {
  std::vector<std::string> out;
  namespace fs = std::filesystem;
  if (!fs::is_directory(golden_dir())) return out;
  for (const auto& entry : fs::directory_iterator(golden_dir())) {
    const std::string name = entry.path().filename().string();
    // nsa_*.h5: the NSA settings' goldens, read by test_nsa.cpp.
    if (entry.path().extension() != ".h5" || name == "optim.h5" || name.rfind("nsa_", 0) == 0) {
      continue;
    }
    const bool is_pair = name.rfind("pair_", 0) == 0;
    if (is_pair == pairs) out.push_back(entry.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Every dataset under `group` (one level), key -> tensor of `dtype`.
inline std::map<std::string, Tensor> read_group(const H5File& f, const std::string& group,
                                                DType dtype) {
  std::map<std::string, Tensor> out;
  for (const std::string& key : f.list(group)) out[key] = f.read(group + "/" + key, dtype);
  return out;
}

// The gradient of every parameter of `m` against the file's /grads/params/<key> (float64),
// relative error below tol; a reference gradient that is zero in exact arithmetic (rounding
// noise in PyTorch) must be noise at the same scale here.
inline void check_param_grads(const H5File& f, const Module& m, double tol) {
  const auto grads = test::read_group(f, "/grads/params", DType::f64);
  const auto params = m.named_parameters();
  REQUIRE(grads.size() == params.size());
  double total = 0;  // the norm of the whole reference gradient
  for (const auto& kv : grads) {
    for (double e : kv.second.to_vector()) total += e * e;
  }
  total = std::sqrt(total);
  for (const auto& kv : params) {
    INFO("parameter ", kv.first);
    REQUIRE(grads.count(kv.first) == 1);
    REQUIRE(kv.second.grad().defined());
    const Tensor got = kv.second.grad().to(DType::f64);
    const std::vector<double> want = grads.at(kv.first).to_vector();
    double norm = 0;
    for (double e : want) norm += e * e;
    if (std::sqrt(norm) > 1e-9 * total) {
      CHECK(rel_error(got, grads.at(kv.first)) < tol);
    } else {
      // Exactly zero in exact arithmetic: a shift of every compressed key (the k side's biases
      // before any nonlinearity, the k positions of the linear kinds) leaves softmax unchanged,
      // so PyTorch's value is rounding noise; ours must be noise at the same scale.
      const std::vector<double> g = got.to_vector();
      double gn = 0;
      for (double e : g) gn += e * e;
      CHECK(std::sqrt(gn) < tol * total);
    }
  }
}

// The options a golden file was made with (layer or pair: the same attributes where shared).
inline CompressorOptions golden_options(const H5File& f, DType dtype) {
  CompressorOptions o;
  o.kind = f.attr_string("/", "kind");
  o.heads = f.attr_int64("/", "h");
  o.dim_head = f.attr_int64("/", "d");
  o.block = f.attr_int64("/", "n");
  o.reduction = f.attr_int64("/", "reduction");
  o.expand = f.attr_double("/", "expand");
  o.dropout = f.attr_double("/", "dropout");
  o.dtype = dtype;
  return o;
}

// Every parameter of `m` perturbed by N(0, std^2) from a fixed stream: identity and zero inits
// must not hide a wrong gradient in the checks.
inline void perturb(Module& m, uint64_t seed, double std) {
  uint64_t offset = 0;
  for (auto& kv : m.named_parameters()) {
    Tensor p = kv.second;
    const std::vector<double> v = p.to_vector();
    const std::vector<double> e =
        Tensor::randn(p.shape(), seed, offset++, 0.0, std, f64()).to_vector();
    std::vector<double> s(v.size());
    for (size_t i = 0; i < v.size(); ++i) s[i] = v[i] + e[i];
    p.copy_from(Tensor::from_vector(s, p.shape(), p.options()));
  }
}

}  // namespace kvc::test
