// safetensors files: the JSON header comes from nlohmann::json, the data is float32
// little-endian whatever the host's byte order.
#include "train/safetensors.h"

#include <sys/stat.h>

#include <cstdint>
#include <cstring>
#include <nlohmann/json.hpp>
#include <set>

#include "base/error.h"

namespace kvc::train {

namespace {

void append_le64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
}

void append_f32_le(std::string& out, const Tensor& t) {
  const Tensor host = t.to(Device::cpu()).to(DType::f32);
  const float* p = host.data<float>();
  for (int64_t i = 0; i < host.numel(); ++i) {
    uint32_t bits = 0;
    std::memcpy(&bits, &p[i], sizeof(bits));
    for (int b = 0; b < 4; ++b) out += static_cast<char>((bits >> (8 * b)) & 0xff);
  }
}

}  // namespace

std::string safetensors_bytes(const NamedTensors& tensors,
                              const std::map<std::string, std::string>& metadata) {
  // Key order: nlohmann::json's object is sorted, and the data follows the same order.
  std::map<std::string, const Tensor*> by_key;
  for (const auto& [key, t] : tensors) {
    KVC_CHECK(t.defined(), "safetensors: tensor '", key, "' is undefined");
    KVC_CHECK(!key.empty() && key != "__metadata__", "safetensors: the key '", key,
              "' cannot name a tensor");
    KVC_CHECK(by_key.emplace(key, &t).second, "safetensors: the key '", key, "' appears twice");
  }
  nlohmann::json header = nlohmann::json::object();
  std::string data;
  for (const auto& [key, t] : by_key) {
    const uint64_t begin = data.size();
    append_f32_le(data, *t);
    header[key] = {{"dtype", "F32"},
                   {"shape", t->shape()},
                   {"data_offsets", {begin, static_cast<uint64_t>(data.size())}}};
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string json = header.dump();
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out;
  out.reserve(8 + json.size() + data.size());
  append_le64(out, json.size());
  out += json;
  out += data;
  return out;
}

size_t export_safetensors(const std::string& checkpoint, const std::string& out, bool overwrite) {
  struct stat st {};
  KVC_CHECK(overwrite || ::stat(out.c_str(), &st) != 0, "export: ", out,
            " exists; pass --overwrite to replace it");
  const Checkpoint ck = load_checkpoint(checkpoint, /*with_optim=*/false);
  std::map<std::string, std::string> metadata{{"format", "pt"},
                                              {"step", std::to_string(ck.meta.step)}};
  for (const Setting& s : settings_table()) {
    // The model and its shape (what rebuilds the modules); not the optimization.
    if (s.attribute != nullptr && s.group != SettingGroup::train) {
      metadata[s.attribute] = setting_text(ck.meta, s);
    }
  }
  write_file_atomic(out, safetensors_bytes(ck.params, metadata));
  return ck.params.size();
}

}  // namespace kvc::train
