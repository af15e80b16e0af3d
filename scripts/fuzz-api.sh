#!/usr/bin/env bash
# Fuzzes the control API's requests (tests/fuzz/api_fuzz.cpp,
# vmm/api/requests.cpp) with libFuzzer for SECONDS (default 60):
#
#   scripts/fuzz-api.sh [SECONDS] [extra libFuzzer options...]
#
# The same as scripts/fuzz.sh api [SECONDS] [...]: seeds, environment and exit status are
# described there.
exec "$(dirname "$0")/fuzz.sh" api "$@"
