#!/usr/bin/env bash
# Fuzzes what a client sends on a VM's API socket (tests/fuzz/http_fuzz.cpp,
# vmm/api/http_plugin.cpp) with libFuzzer for SECONDS (default 60):
#
#   scripts/fuzz-http.sh [SECONDS] [extra libFuzzer options...]
#
# The same as scripts/fuzz.sh http [SECONDS] [...]: seeds, environment and exit status are
# described there.
exec "$(dirname "$0")/fuzz.sh" http "$@"
