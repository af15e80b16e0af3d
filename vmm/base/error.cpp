#include "vmm/base/error.hpp"

#include <cstring>

namespace vmm {

std::string errno_text(int err) {
  char buf[128];
  // GNU strerror_r returns the message pointer (possibly not buf).
  return ::strerror_r(err, buf, sizeof buf);
}

}  // namespace vmm
