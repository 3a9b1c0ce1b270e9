// Parsing device names ("cpu", "cuda", "cuda:0").
#include "base/dtype.h"

namespace kvc {

Device parse_device(const std::string& s) {
  if (s == "cpu") return Device::cpu();
  if (s == "cuda") return Device::cuda(0);
  const std::string idx = s.rfind("cuda:", 0) == 0 ? s.substr(5) : std::string();
  KVC_CHECK(
      !idx.empty() && idx.size() < 6 && idx.find_first_not_of("0123456789") == std::string::npos,
      "device: bad device string '", s, "' (expected cpu, cuda or cuda:0)");
  const int index = std::stoi(idx);
  KVC_CHECK(index == 0, "device: ", s,
            " is not supported: kvcompress runs on one GPU, cuda:0 (make the GPU you want the "
            "only visible one with CUDA_VISIBLE_DEVICES=",
            index, ")");
  return Device::cuda(0);
}

}  // namespace kvc
