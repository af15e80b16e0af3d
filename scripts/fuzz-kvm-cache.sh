#!/usr/bin/env bash
# Fuzzes the supported-CPUID cache file's decoder (tests/fuzz/kvm_cache_fuzz.cpp, vmm/kvm_cache.cpp)
# with libFuzzer for SECONDS (default 60):
#
#   scripts/fuzz-kvm-cache.sh [SECONDS] [extra libFuzzer options...]
#
# The same as scripts/fuzz.sh kvm-cache [SECONDS] [...]: seeds, environment and exit status are
# described there.
exec "$(dirname "$0")/fuzz.sh" kvm-cache "$@"
