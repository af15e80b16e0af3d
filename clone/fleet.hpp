// A fleet in one command: `vmm run --clone-of T --count N [--detach]`, one process per clone.
#pragma once

#include "clone/clones.hpp"

namespace vmm::clone {

/// `vmm run --clone-of T --count N [--detach]`.
int run_fleet(const CloneOptions& options, unsigned count, bool detach);

}  // namespace vmm::clone
