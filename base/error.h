// kvc::Error and the checks that throw it: the library throws, only main() prints.
#pragma once

#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace kvc {

// Every failure the library reports. `what()` is one line that names the problem and the values.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// Thrown when the device runs out of memory, so callers (bench, train) can say so specifically.
class OutOfMemoryError : public Error {
 public:
  explicit OutOfMemoryError(const std::string& msg) : Error(msg) {}
};

namespace detail {

inline void stream_one(std::ostringstream& os, const std::vector<int64_t>& shape) {
  os << '(';
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  if (shape.size() == 1) os << ',';
  os << ')';
}
template <typename T>
void stream_one(std::ostringstream& os, const T& v) {
  os << v;
}

template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (stream_one(os, args), ...);
  return os.str();
}

}  // namespace detail

// Formats any mix of strings, numbers and shapes (std::vector<int64_t> prints as "(2, 3)").
template <typename... Args>
std::string str(const Args&... args) {
  return detail::concat(args...);
}

}  // namespace kvc

// KVC_CHECK(cond, "mix: input ", x.shape(), " does not match heads ", h) throws kvc::Error.
#define KVC_CHECK(cond, ...)                                  \
  do {                                                        \
    if (!(cond)) throw ::kvc::Error(::kvc::str(__VA_ARGS__)); \
  } while (0)

#define KVC_FAIL(...) throw ::kvc::Error(::kvc::str(__VA_ARGS__))
