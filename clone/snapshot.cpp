#include "clone/snapshot.hpp"

#include <fmt/core.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "vmm/base/codec.hpp"
#include "vmm/base/layout.hpp"

namespace vmm::clone {

namespace {

constexpr size_t kMaxCpuidEntries = 256;  // KVM_MAX_CPUID_ENTRIES: KVM_SET_CPUID2 refuses more (E2BIG)
constexpr uint64_t kMinMemory = 4ull << 20;  // as `vmm run --memory`
constexpr uint64_t kMaxMemory = 1ull << 40;
constexpr size_t kMaxMsrs = 4096;
constexpr size_t kMaxXsave = 1 << 20;

std::string vendor_of(const CpuidEntries& cpuid) {
  for (const auto& e : cpuid) {
    if (e.function != 0) continue;
    char v[12];
    std::memcpy(v, &e.ebx, 4);
    std::memcpy(v + 4, &e.edx, 4);
    std::memcpy(v + 8, &e.ecx, 4);
    return std::string(v, 12);
  }
  return {};
}

uint32_t signature_of(const CpuidEntries& cpuid) {
  for (const auto& e : cpuid) {
    if (e.function == 1) return e.eax;
  }
  return 0;
}

std::string vcpu_id(size_t i) { return fmt::format("vcpu{}", i); }

void put_vcpu(ByteWriter& w, const VcpuState& s) {
  w.put_raw(s.regs);
  w.put_raw(s.sregs);
  w.put_raw(s.fpu);
  w.put_blob(s.xsave);
  w.put_raw(s.xcrs);
  w.put_raw(s.lapic);
  w.put_raw(s.events);
  w.put_raw(s.mp_state);
  w.put_raw(s.debugregs);
  w.put_vector(s.msrs);
  w.put(s.tsc_khz);
}

}  // namespace

Result<VcpuState> read_vcpu(ByteReader& r) {
  VcpuState s;
  auto fail_with = [](const Error& e) { return std::unexpected(e); };
  if (auto v = r.get_raw<kvm_regs>("regs")) s.regs = *v; else return fail_with(v.error());
  if (auto v = r.get_raw<kvm_sregs>("sregs")) s.sregs = *v; else return fail_with(v.error());
  if (auto v = r.get_raw<kvm_fpu>("fpu")) s.fpu = *v; else return fail_with(v.error());
  if (auto v = r.get_blob("xsave", kMaxXsave)) s.xsave.assign(v->begin(), v->end()); else return fail_with(v.error());
  if (auto v = r.get_raw<kvm_xcrs>("xcrs")) s.xcrs = *v; else return fail_with(v.error());
  if (auto v = r.get_raw<kvm_lapic_state>("lapic")) s.lapic = *v; else return fail_with(v.error());
  if (auto v = r.get_raw<kvm_vcpu_events>("events")) s.events = *v; else return fail_with(v.error());
  if (auto v = r.get_raw<kvm_mp_state>("mp_state")) s.mp_state = *v; else return fail_with(v.error());
  if (auto v = r.get_raw<kvm_debugregs>("debugregs")) s.debugregs = *v; else return fail_with(v.error());
  if (auto v = r.get_vector<kvm_msr_entry>("msrs", kMaxMsrs)) s.msrs = std::move(*v); else return fail_with(v.error());
  if (auto v = r.get<uint32_t>("tsc_khz")) s.tsc_khz = *v; else return fail_with(v.error());
  if (s.xsave.size() < 4096) return std::unexpected(r.error("xsave", fmt::format("{} bytes, at least 4096 expected", s.xsave.size())));
  return s;
}

Result<StateFile> capture(Machine& machine, CpuTemplate cpu_template) {
  Vm& vm = machine.vm();
  StateFile file;
  std::vector<VcpuState> vcpus;
  for (size_t i = 0; i < vm.vcpu_count(); ++i) {
    auto s = vm.vcpu(i).save(machine.kvm().msr_index_list(), machine.kvm().xsave_size());
    if (!s) return std::unexpected(s.error());
    vcpus.push_back(std::move(*s));
  }
  const CpuidEntries& cpuid0 = vm.vcpu(0).cpuid();
  {
    ByteWriter w;
    w.put(static_cast<uint32_t>(vm.vcpu_count()));
    w.put(vm.memory().size());
    w.put(static_cast<uint8_t>(cpu_template));
    w.put_string(vendor_of(cpuid0));
    w.put(signature_of(cpuid0));
    w.put(vcpus.front().tsc_khz);
    w.put(static_cast<uint64_t>(machine.kvm().xsave_size()));
    file.sections.push_back({.id = "machine", .data = w.take()});
  }
  {
    ByteWriter w;
    for (size_t i = 0; i < vm.vcpu_count(); ++i) w.put_vector(vm.vcpu(i).cpuid());
    file.sections.push_back({.id = "cpuid", .data = w.take()});
  }
  {
    auto k = vm.save_kernel_state();
    if (!k) return std::unexpected(k.error());
    ByteWriter w;
    w.put_raw(*k);
    file.sections.push_back({.id = "kvm", .data = w.take()});
  }
  for (size_t i = 0; i < vcpus.size(); ++i) {
    ByteWriter w;
    put_vcpu(w, vcpus[i]);
    file.sections.push_back({.id = vcpu_id(i), .data = w.take()});
  }
  for (const auto& d : machine.platform().devices()) {
    ByteWriter w;
    d.state->save(w);
    file.sections.push_back({.id = "dev." + d.id, .data = w.take()});
  }
  return file;
}

Result<MachineShape> read_shape(const StateFile& state, std::string_view file) {
  MachineShape shape;
  auto m = state.require("machine", file);
  if (!m) return std::unexpected(m.error());
  ByteReader r(*m, fmt::format("{}: section machine", file));
  auto vcpus = r.get<uint32_t>("vcpus");
  if (!vcpus) return std::unexpected(vcpus.error());
  if (*vcpus == 0 || *vcpus > kMaxVcpus) return std::unexpected(r.error("vcpus", fmt::format("{} is out of range", *vcpus)));
  shape.vcpus = *vcpus;
  auto memory = r.get<uint64_t>("memory");
  if (!memory) return std::unexpected(memory.error());
  if (*memory < kMinMemory || *memory % 4096 != 0 || *memory > kMaxMemory) {
    return std::unexpected(r.error("memory", fmt::format("{:#x} is not a valid RAM size (4 MiB to 1 TiB, in 4 KiB pages)", *memory)));
  }
  shape.memory = *memory;
  auto tmpl = r.get<uint8_t>("cpu_template");
  if (!tmpl) return std::unexpected(tmpl.error());
  if (*tmpl > static_cast<uint8_t>(CpuTemplate::Baseline)) return std::unexpected(r.error("cpu_template", fmt::format("unknown template {}", *tmpl)));
  shape.cpu_template = static_cast<CpuTemplate>(*tmpl);
  auto vendor = r.get_string("vendor", 12);
  if (!vendor) return std::unexpected(vendor.error());
  // CPUID's vendor string is printable ASCII ("GenuineIntel", "AuthenticAMD"); it is printed in the
  // mismatch message, which must stay one line without terminal controls.
  if (!std::ranges::all_of(*vendor, [](char ch) { return ch >= 0x20 && ch < 0x7f; })) {
    return std::unexpected(r.error("vendor", fmt::format("'{}' is not a CPU vendor string", printable(*vendor))));
  }
  shape.vendor = *vendor;
  auto sig = r.get<uint32_t>("signature");
  if (!sig) return std::unexpected(sig.error());
  shape.signature = *sig;
  auto khz = r.get<uint32_t>("tsc_khz");
  if (!khz) return std::unexpected(khz.error());
  shape.tsc_khz = *khz;
  auto xsave = r.get<uint64_t>("xsave_size");
  if (!xsave) return std::unexpected(xsave.error());
  shape.xsave_size = *xsave;
  if (auto f = r.finish(); !f) return std::unexpected(f.error());

  auto c = state.require("cpuid", file);
  if (!c) return std::unexpected(c.error());
  ByteReader cr(*c, fmt::format("{}: section cpuid", file));
  for (uint32_t i = 0; i < shape.vcpus; ++i) {
    auto entries = cr.get_vector<kvm_cpuid_entry2>(fmt::format("vcpu {}", i), kMaxCpuidEntries);
    if (!entries) return std::unexpected(entries.error());
    if (entries->empty()) return std::unexpected(cr.error(fmt::format("vcpu {}", i), "no CPUID entries"));
    shape.cpuid.push_back(std::move(*entries));
  }
  if (auto f = cr.finish(); !f) return std::unexpected(f.error());
  return shape;
}

namespace {
const kvm_cpuid_entry2* find_leaf(const CpuidEntries& table, uint32_t function, uint32_t index) {
  for (const auto& e : table) {
    if (e.function == function && e.index == index) return &e;
  }
  return nullptr;
}

/// Every feature bit one vCPU's saved table shows must still be offered by `here`, this host's
/// table for the template; its address sizes (leaf 0x80000008) must fit this host's.
Result<> check_features(const CpuidEntries& saved_table, const CpuidEntries& here, size_t vcpu, std::string_view file) {
  struct Leaf {
    uint32_t function, index;
  };
  for (const Leaf leaf : {Leaf{1, 0}, Leaf{6, 0}, Leaf{7, 0}, Leaf{7, 1}, Leaf{0xd, 0}, Leaf{0xd, 1}, Leaf{0x80000001, 0},
                          Leaf{0x80000007, 0}, Leaf{0x80000008, 0}}) {
    const kvm_cpuid_entry2* saved = find_leaf(saved_table, leaf.function, leaf.index);
    if (!saved) continue;
    const kvm_cpuid_entry2* host = find_leaf(here, leaf.function, leaf.index);
    const uint32_t regs_saved[4] = {saved->eax, saved->ebx, saved->ecx, saved->edx};
    const uint32_t regs_host[4] = {host ? host->eax : 0, host ? host->ebx : 0, host ? host->ecx : 0, host ? host->edx : 0};
    static constexpr const char* kNames[4] = {"eax", "ebx", "ecx", "edx"};
    for (int i = 0; i < 4; ++i) {
      if (leaf.function == 1 && i == 1) continue;  // leaf 1 EBX: APIC id and counts, not features
      if (leaf.function == 1 && i == 0) continue;  // the signature, checked by check_cpu
      if (leaf.function == 0xd && leaf.index == 0 && i != 0 && i != 3) continue;  // sizes, not features
      // Leaf 0x80000008: EAX holds the address sizes (below), ECX core counts; EBX is features.
      if (leaf.function == 0x80000008 && i != 1) continue;
      // (An older template's guest may have seen bits this vmm now withholds: restored as saved.)
      const uint32_t missing = regs_saved[i] & ~regs_host[i] & ~withheld_cpuid_bits(leaf.function, leaf.index, i);
      if (missing) {
        return fail("{}: vCPU {} saw CPUID leaf {:#x}.{} {} bits {:#x} that this host does not offer", file, vcpu,
                    leaf.function, leaf.index, kNames[i], missing);
      }
    }
    if (leaf.function == 0x80000008) {
      // A guest told of more physical address bits than this host has would address memory it
      // cannot (KVM_SET_CPUID2 refuses other virtual-address widths than the host's, EINVAL).
      const uint32_t phys = saved->eax & 0xff, virt = (saved->eax >> 8) & 0xff;
      const uint32_t host_phys = host ? host->eax & 0xff : 36, host_virt = host ? (host->eax >> 8) & 0xff : 48;
      if (phys > host_phys) {
        return fail("{}: vCPU {} was told of {} physical address bits, this host has {}", file, vcpu, phys, host_phys);
      }
      if (virt != host_virt) {
        return fail("{}: vCPU {} was told of {} virtual address bits, this host has {}", file, vcpu, virt, host_virt);
      }
    }
  }
  return {};
}
}  // namespace

Result<> check_cpu(const Kvm& kvm, const MachineShape& shape, std::string_view file) {
  const CpuidEntries here = make_cpuid(kvm.supported_cpuid(), shape.cpu_template, 0, shape.vcpus);
  const std::string vendor = vendor_of(here);
  if (vendor != shape.vendor) {
    return fail("{}: made on a {} CPU, this host is {}: a template only runs on the CPU it was made on", file,
                shape.vendor, vendor);
  }
  if (signature_of(here) != shape.signature) {
    return fail("{}: made on CPU family/model/stepping {:#x}, this host has {:#x}", file, shape.signature, signature_of(here));
  }
  if (shape.xsave_size != kvm.xsave_size()) {
    return fail("{}: XSAVE area of {} bytes, this host's is {}", file, shape.xsave_size, kvm.xsave_size());
  }
  if (shape.vcpus > kvm.max_vcpus()) {
    return fail("{}: {} vCPUs, this host's KVM runs at most {} in a VM", file, shape.vcpus, kvm.max_vcpus());
  }
  // The guest's RAM must be addressable here: above 3 GiB it continues at 4 GiB (vmm/base/layout.hpp).
  const kvm_cpuid_entry2* sizes = find_leaf(here, 0x80000008, 0);
  const uint32_t host_phys = sizes ? sizes->eax & 0xff : 36;
  const uint64_t top = shape.memory > layout::kMmioHoleStart ? shape.memory + (layout::kMmioHoleEnd - layout::kMmioHoleStart) : shape.memory;
  if (host_phys < 64 && top > (1ull << host_phys)) {
    return fail("{}: {} MiB of RAM reach beyond this host's {} physical address bits", file, shape.memory >> 20, host_phys);
  }
  // Every vCPU's table is set as saved: each one's features must still be offered here.
  for (size_t i = 0; i < shape.cpuid.size(); ++i) {
    if (auto r = check_features(shape.cpuid[i], here, i, file); !r) return r;
  }
  return {};
}

Result<VmKernelState> read_kernel_state(const StateFile& state, std::string_view file) {
  auto bytes = state.require("kvm", file);
  if (!bytes) return std::unexpected(bytes.error());
  ByteReader r(*bytes, fmt::format("{}: section kvm", file));
  auto k = r.get_raw<VmKernelState>("kvm");
  if (!k) return std::unexpected(k.error());
  if (auto f = r.finish(); !f) return std::unexpected(f.error());
  // KVM loads each record into the chip its id names, the IOAPIC at the base address it holds, and
  // the PIT with the flags it has: what capture() saved, and nothing else (a record labelled as
  // another chip would leave that one as created; an IOAPIC moved from where the guest's ACPI
  // tables put it, or a PIT silenced as HPET-driven, would break the guest).
  const std::pair<const kvm_irqchip*, uint32_t> chips[] = {
      {&k->pic_master, KVM_IRQCHIP_PIC_MASTER}, {&k->pic_slave, KVM_IRQCHIP_PIC_SLAVE}, {&k->ioapic, KVM_IRQCHIP_IOAPIC}};
  for (const auto& [chip, id] : chips) {
    if (chip->chip_id != id) return std::unexpected(r.error("kvm", fmt::format("interrupt controller {} recorded as chip {}", id, chip->chip_id)));
  }
  if (k->ioapic.chip.ioapic.base_address != layout::kIoapicAddr) {
    return std::unexpected(r.error("kvm", fmt::format("IOAPIC at {:#x}, not {:#x}", k->ioapic.chip.ioapic.base_address, layout::kIoapicAddr)));
  }
  if (k->pit.flags & ~static_cast<uint32_t>(KVM_PIT_FLAGS_SPEAKER_DATA_ON)) {
    return std::unexpected(r.error("kvm", fmt::format("PIT flags {:#x}", k->pit.flags)));
  }
  return *k;
}

// The clock is brought to the present through kvmclock only. A Linux guest on KVM keeps time with
// kvm-clock unless it trusts the TSC (invariant and stable); such a guest's TSC runs on from the
// snapshot, as it does after a Firecracker or QEMU restore. Stepping every vCPU's TSC as well
// (tried) made Linux clones in the nested lane triple-fault right after the restore in 2 of 9
// runs, against none in 10 without it; their clocksource there is kvm-clock, and their clock is
// right without it.
// The PIT and kvmclock only: the interrupt controllers keep what was raised since the restore
// (begin_clone's VMGenID edge; reloading them as saved, as this did until 2026-12-04, dropped that
// edge for a guest routing it through the 8259).
Result<> step_clock(Machine& machine, const StateFile& state, std::string_view file) {
  auto k = read_kernel_state(state, file);
  if (!k) return std::unexpected(k.error());
  if (auto ok = machine.vm().restore_timers(*k, /*clock_to_now=*/true); !ok) return std::unexpected(ok.error().context(file));
  return {};
}

Result<> restore(Machine& machine, const StateFile& state, std::string_view file, Timers timers) {
  Vm& vm = machine.vm();
  std::set<std::string, std::less<>> expected = {"machine", "cpuid", "kvm"};
  for (size_t i = 0; i < vm.vcpu_count(); ++i) expected.insert(vcpu_id(i));
  for (const auto& d : machine.platform().devices()) expected.insert("dev." + d.id);
  for (const auto& s : state.sections) {
    if (!expected.contains(s.id)) {
      return fail("{}: section '{}' belongs to no part of this machine (another configuration, or a newer vmm)", file, s.id);
    }
  }
  // The machine and cpuid sections must be well-formed and describe this machine: restore does not
  // trust that it was built from this very file's read_shape().
  auto shape = read_shape(state, file);
  if (!shape) return std::unexpected(shape.error());
  if (shape->vcpus != vm.vcpu_count()) {
    return fail("{}: section machine: vcpus: {} saved, this machine has {}", file, shape->vcpus, vm.vcpu_count());
  }
  if (shape->memory != vm.memory().size()) {
    return fail("{}: section machine: memory: {:#x} bytes saved, this machine has {:#x}", file, shape->memory,
                vm.memory().size());
  }
  // Devices first: restoring MSI-X tables sets up their interrupt routes before anything fires,
  // every vector's in one KVM_SET_GSI_ROUTING.
  auto routes = vm.batch_routes();
  for (const auto& d : machine.platform().devices()) {
    const std::string id = "dev." + d.id;
    auto bytes = state.require(id, file);
    if (!bytes) return std::unexpected(bytes.error());
    ByteReader r(*bytes, fmt::format("{}: section {}", file, id));
    r.set_format_minor(state.minor);
    if (auto ok = d.state->restore(r); !ok) return ok;
    if (auto f = r.finish(); !f) return f;
  }
  if (auto ok = routes.commit(); !ok) return std::unexpected(ok.error().context(file));
  auto kernel = read_kernel_state(state, file);
  if (!kernel) return std::unexpected(kernel.error());
  if (auto ok = vm.restore_irqchips(*kernel); !ok) return std::unexpected(ok.error().context(file));
  if (timers != Timers::AtStart) {
    if (auto ok = vm.restore_timers(*kernel, /*clock_to_now=*/timers == Timers::AsSavedToNow); !ok) return std::unexpected(ok.error().context(file));
  }
  for (size_t i = 0; i < vm.vcpu_count(); ++i) {
    auto bytes = state.require(vcpu_id(i), file);
    if (!bytes) return std::unexpected(bytes.error());
    ByteReader r(*bytes, fmt::format("{}: section {}", file, vcpu_id(i)));
    auto s = read_vcpu(r);
    if (!s) return std::unexpected(s.error());
    if (auto f = r.finish(); !f) return f;
    if (s->xsave.size() != std::max<size_t>(machine.kvm().xsave_size(), 4096)) {
      return fail("{}: section {}: XSAVE area of {} bytes, this host uses {}", file, vcpu_id(i), s->xsave.size(),
                  machine.kvm().xsave_size());
    }
    if (auto ok = vm.vcpu(i).restore(*s); !ok) return std::unexpected(ok.error().context(file));
  }
  return {};
}

}  // namespace vmm::clone
