// A well-formed template manifest for the manifest's unit tests and its fuzz target's seeds.
#pragma once

#include <string>

#include "clone/template.hpp"

namespace template_test {

/// A manifest with `disks` disks (raw, qcow2, raw, ...) and `nets` interfaces, format 1.1 with the
/// guest's IP and gateway, or 1.0 without them.
inline vmm::clone::Manifest sample_manifest(unsigned disks = 1, unsigned nets = 1, bool v10 = false) {
  using namespace vmm::clone;
  Manifest m;
  m.name = "web";
  m.created = "2026-12-05T01:00:00Z";
  m.vmm_version = "0.1.0";
  m.memory = 256ull << 20;
  m.vcpus = 2;
  m.cpu_template = "host";
  m.kernel = "/boot/vmlinuz";
  m.cmdline = "console=ttyS0 quiet";
  for (unsigned i = 0; i < disks; ++i) {
    const bool qcow2 = i % 2 == 1;
    m.disks.push_back({.file = {.name = "disks/disk" + std::to_string(i) + (qcow2 ? ".qcow2" : ".img"), .size = 196608,
                                .checksum = 0x1234abcd + i, .data_bytes = 0},
                       .id = "d" + std::to_string(i),
                       .format = qcow2 ? "qcow2" : "raw",
                       .read_only = !qcow2});
  }
  for (unsigned i = 0; i < nets; ++i) m.nets.push_back({.mac = "52:54:00:12:34:5" + std::to_string(i), .tap = "tap" + std::to_string(i)});
  if (v10) {
    m.minor = 0;
  } else {
    m.ip = "10.0.0.2/24";
    m.gateway = "10.0.0.1";
  }
  m.state = {.name = kStateFile, .size = 9000, .checksum = 0xdeadbeef, .data_bytes = 0};
  m.memory_file = {.name = kMemoryFile, .size = m.memory, .checksum = 0x00c0ffee, .data_bytes = 4096};
  return m;
}

}  // namespace template_test
