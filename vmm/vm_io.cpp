#include "vmm/vm_io.hpp"

#include <fmt/core.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "vmm/base/fd.hpp"
#include "vmm/kvm_abi.hpp"

namespace vmm {

namespace {

constexpr uint32_t kIoapicPins = 24;
constexpr uint32_t kPicIrqs = 16;

/// One MSI vector: a GSI with an MSI route and an irqfd on it.
class KvmMsiVector final : public devices::MsiVector {
 public:
  KvmMsiVector(KvmVmIo& io, uint32_t gsi, Fd eventfd) : io_(io), gsi_(gsi), eventfd_(std::move(eventfd)) {}
  void set_message(uint64_t address, uint32_t data) override {
    if (auto r = io_.set_msi_route(gsi_, address, data); !r) {
      fmt::print(stderr, "vmm: MSI route for GSI {}: {}\n", gsi_, r.error().message());
    }
  }
  void trigger() override {
    const uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(eventfd_.get(), &one, sizeof one);
  }

 private:
  KvmVmIo& io_;
  uint32_t gsi_;
  Fd eventfd_;
};

/// A level-triggered line: an irqfd with a resample fd (KVM API 4.75, KVM_IRQFD_FLAG_RESAMPLE).
class KvmIntxLine final : public devices::IntxLine {
 public:
  KvmIntxLine(Fd trigger, Fd resample) : trigger_(std::move(trigger)), resample_(std::move(resample)) {}
  void assert_line() override {
    const uint64_t one = 1;
    [[maybe_unused]] auto n = ::write(trigger_.get(), &one, sizeof one);
  }
  int resample_fd() const override { return resample_.get(); }

 private:
  Fd trigger_, resample_;
};

}  // namespace

Result<std::unique_ptr<devices::IntxLine>> KvmVmIo::allocate_intx(uint32_t gsi) {
  Fd trigger(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  Fd resample(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!trigger || !resample) return fail("eventfd: {}", errno_text(errno));
  kvm_irqfd irqfd{};
  irqfd.fd = static_cast<uint32_t>(trigger.get());
  irqfd.gsi = gsi;
  irqfd.flags = KVM_IRQFD_FLAG_RESAMPLE;
  irqfd.resamplefd = static_cast<uint32_t>(resample.get());
  if (::ioctl(vm_fd_, KVM_IRQFD, &irqfd) < 0) return fail("KVM_IRQFD (resample) for GSI {}: {}", gsi, errno_text(errno));
  return std::unique_ptr<devices::IntxLine>(std::make_unique<KvmIntxLine>(std::move(trigger), std::move(resample)));
}

std::vector<kvm_irq_routing_entry> KvmVmIo::routes() const {
  std::vector<kvm_irq_routing_entry> r;
  for (uint32_t gsi = 0; gsi < kIoapicPins; ++gsi) {
    if (gsi < kPicIrqs) {
      kvm_irq_routing_entry pic{};
      pic.gsi = gsi;
      pic.type = KVM_IRQ_ROUTING_IRQCHIP;
      pic.u.irqchip.irqchip = gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE;
      pic.u.irqchip.pin = gsi % 8;
      r.push_back(pic);
    }
    kvm_irq_routing_entry ioapic{};
    ioapic.gsi = gsi;
    ioapic.type = KVM_IRQ_ROUTING_IRQCHIP;
    ioapic.u.irqchip.irqchip = KVM_IRQCHIP_IOAPIC;
    ioapic.u.irqchip.pin = gsi;
    r.push_back(ioapic);
  }
  std::lock_guard lock(mutex_);
  r.insert(r.end(), msi_routes_.begin(), msi_routes_.end());
  return r;
}

Result<> KvmVmIo::set_msi_route(uint32_t gsi, uint64_t address, uint32_t data) {
  {
    std::lock_guard lock(mutex_);
    kvm_irq_routing_entry* e = nullptr;
    for (auto& m : msi_routes_) {
      if (m.gsi == gsi) e = &m;
    }
    const auto lo = static_cast<uint32_t>(address), hi = static_cast<uint32_t>(address >> 32);
    if (!e && address == 0 && data == 0) return {};  // a vector never programmed needs no route
    // An unchanged route, unless KVM's table may differ from this one (a commit failed since).
    if (e && e->u.msi.address_lo == lo && e->u.msi.address_hi == hi && e->u.msi.data == data && !stale_) return {};
    if (!e) e = &msi_routes_.emplace_back();
    *e = kvm_irq_routing_entry{};
    e->gsi = gsi;
    e->type = KVM_IRQ_ROUTING_MSI;
    e->u.msi.address_lo = lo;
    e->u.msi.address_hi = hi;
    e->u.msi.data = data;
    if (held_ > 0) {
      uncommitted_ = true;
      return {};
    }
  }
  return commit_routes();
}

void KvmVmIo::hold_routes() {
  std::lock_guard lock(mutex_);
  ++held_;
}

Result<> KvmVmIo::release_routes() {
  {
    std::lock_guard lock(mutex_);
    if (held_ == 0 || --held_ > 0 || !std::exchange(uncommitted_, false)) return {};
  }
  return commit_routes();
}

uint64_t KvmVmIo::route_commits() const {
  std::lock_guard lock(mutex_);
  return commits_;
}

Result<> KvmVmIo::commit_routes() {
  // Routes are committed whole; a second writer commits a table that includes the first's entry.
  std::lock_guard lock(commit_mutex_);
  const auto table = routes();
  // The C layout (kvm_abi.hpp): the 8-byte header, then the entries.
  const kvm_abi::IrqRoutingHeader header{.nr = static_cast<uint32_t>(table.size()), .flags = 0};
  std::vector<uint8_t> buf(sizeof header + table.size() * sizeof(kvm_irq_routing_entry));
  std::memcpy(buf.data(), &header, sizeof header);
  std::memcpy(buf.data() + sizeof header, table.data(), table.size() * sizeof(kvm_irq_routing_entry));
  const bool failed = ::ioctl(vm_fd_, kvm_abi::kSetGsiRouting, buf.data()) < 0;
  const int error = errno;
  std::lock_guard lock2(mutex_);
  stale_ = failed;
  if (failed) return fail("KVM_SET_GSI_ROUTING: {}", errno_text(error));
  ++commits_;
  return {};
}

Result<std::unique_ptr<devices::MsiVector>> KvmVmIo::allocate_msi() {
  uint32_t gsi;
  {
    std::lock_guard lock(mutex_);
    gsi = next_gsi_++;
  }
  Fd efd(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC));
  if (!efd) return fail("eventfd: {}", errno_text(errno));
  kvm_irqfd irqfd{};
  irqfd.fd = static_cast<uint32_t>(efd.get());
  irqfd.gsi = gsi;
  if (::ioctl(vm_fd_, KVM_IRQFD, &irqfd) < 0) return fail("KVM_IRQFD for GSI {}: {}", gsi, errno_text(errno));
  return std::unique_ptr<devices::MsiVector>(std::make_unique<KvmMsiVector>(*this, gsi, std::move(efd)));
}

Result<> KvmVmIo::add_ioeventfd(uint64_t gpa, int eventfd) {
  kvm_ioeventfd io{};
  io.addr = gpa;
  io.len = 0;  // any access length (KVM_CAP_IOEVENTFD_ANY_LENGTH)
  io.fd = eventfd;
  if (::ioctl(vm_fd_, KVM_IOEVENTFD, &io) < 0) return fail("KVM_IOEVENTFD at {:#x}: {}", gpa, errno_text(errno));
  return {};
}

void KvmVmIo::remove_ioeventfd(uint64_t gpa, int eventfd) {
  kvm_ioeventfd io{};
  io.addr = gpa;
  io.len = 0;
  io.fd = eventfd;
  io.flags = KVM_IOEVENTFD_FLAG_DEASSIGN;
  ::ioctl(vm_fd_, KVM_IOEVENTFD, &io);
}

}  // namespace vmm
