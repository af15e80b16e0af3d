// A warm pool of clones: `vmm pool TEMPLATE --size K` keeps K members prepared (clone/clones.hpp)
// and hands one out per request; `vmm run --clone-of T --pool SOCKET` asks for one.
#pragma once

#include <string>

#include "clone/clones.hpp"

namespace vmm::clone {

/// `vmm pool TEMPLATE --size K`: serves until SIGINT/SIGTERM.
int run_pool(const CloneOptions& options, unsigned size);
/// `vmm run --clone-of T --pool SOCKET`: a clone from the pool at SOCKET.
int run_from_pool(const std::string& socket, const CloneOptions& options);

}  // namespace vmm::clone
