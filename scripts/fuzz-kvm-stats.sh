#!/usr/bin/env bash
# Fuzzes the KVM binary stats parser (tests/fuzz/kvm_stats_fuzz.cpp, vmm/kvm_stats.cpp) with
# libFuzzer for SECONDS (default 60):
#
#   scripts/fuzz-kvm-stats.sh [SECONDS] [extra libFuzzer options...]
#
# The same as scripts/fuzz.sh kvm-stats [SECONDS] [...]: seeds, environment and exit status are
# described there.
exec "$(dirname "$0")/fuzz.sh" kvm-stats "$@"
