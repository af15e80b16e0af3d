#include "vmm/base/wake_hint.hpp"

namespace vmm {

OffCpuWake::OffCpuWake(pthread_t thread) : thread_(thread) {
  CPU_ZERO(&allowed_);
  if (::sched_getaffinity(0, sizeof allowed_, &allowed_) != 0) CPU_ZERO(&allowed_);
}

void OffCpuWake::avoid_this_cpu() {
  const int cpu = ::sched_getcpu();
  if (cpu < 0 || cpu >= CPU_SETSIZE || cpu == avoided_ || !CPU_ISSET(cpu, &allowed_)) return;
  cpu_set_t others = allowed_;
  CPU_CLR(cpu, &others);
  if (CPU_COUNT(&others) == 0) return;
  if (::pthread_setaffinity_np(thread_, sizeof others, &others) == 0) avoided_ = cpu;
}

void OffCpuWake::allow_all() {
  if (avoided_ < 0) return;
  if (::pthread_setaffinity_np(::pthread_self(), sizeof allowed_, &allowed_) == 0) avoided_ = -1;
}

}  // namespace vmm
