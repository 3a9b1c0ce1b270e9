// Names of the math precisions (kernels/precision.h), for logs and benchmark output.
#include "kernels/precision.h"

namespace kvc::kernels {

const char* precision_name(MathPrecision p) {
  switch (p) {
    case MathPrecision::tf32:
      return "tf32";
    case MathPrecision::bf16:
      return "bf16";
    case MathPrecision::fp32:
      break;
  }
  return "fp32";
}

}  // namespace kvc::kernels
