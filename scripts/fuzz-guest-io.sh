#!/usr/bin/env bash
# Fuzzes a hostile guest's device traffic (tests/fuzz/guest_io_fuzz.cpp: port I/O, PCI configuration,
# virtio-pci BARs, virtqueues, block requests, frames) with libFuzzer for SECONDS (default 60):
#
#   scripts/fuzz-guest-io.sh [SECONDS] [extra libFuzzer options...]
#
# The same as scripts/fuzz.sh guest-io [SECONDS] [...]: seeds, environment and exit status are
# described there.
exec "$(dirname "$0")/fuzz.sh" guest-io "$@"
