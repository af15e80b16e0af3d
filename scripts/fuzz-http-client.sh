#!/usr/bin/env bash
# Fuzzes the control API's client parser (tests/fuzz/http_client_fuzz.cpp, vmm/api/http_client.cpp)
# with libFuzzer for SECONDS (default 60):
#
#   scripts/fuzz-http-client.sh [SECONDS] [extra libFuzzer options...]
#
# The same as scripts/fuzz.sh http-client [SECONDS] [...]: seeds, environment and exit status are
# described there.
exec "$(dirname "$0")/fuzz.sh" http-client "$@"
