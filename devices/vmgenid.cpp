#include "devices/vmgenid.hpp"

#include "vmm/base/layout.hpp"

namespace vmm::devices {

static_assert(sizeof(VmGenId::Id) == layout::kVmGenIdSize);

VmGenId::VmGenId(const GuestMemory& memory, std::shared_ptr<IrqLine> ged_irq)
    : memory_(memory), ged_irq_(std::move(ged_irq)) {}

Result<> VmGenId::set(const Id& id) {
  if (auto r = memory_.write(Gpa(layout::kVmGenIdAddr), id); !r) {
    return std::unexpected(r.error().context("writing the VM generation ID"));
  }
  return {};
}

void VmGenId::notify() {
  if (ged_irq_) ged_irq_->trigger();
}

VmGenId::Id VmGenId::get() const {
  Id id{};
  if (!memory_.read(Gpa(layout::kVmGenIdAddr), id)) id.fill(0);
  return id;
}

}  // namespace vmm::devices
