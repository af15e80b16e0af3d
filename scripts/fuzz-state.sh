#!/usr/bin/env bash
# Fuzzes the snapshot state file parser (tests/fuzz/state_fuzz.cpp) with libFuzzer for SECONDS
# (default 60):
#
#   scripts/fuzz-state.sh [SECONDS] [extra libFuzzer options...]
#
# The same as scripts/fuzz.sh state [SECONDS] [...]: seeds, environment and exit status are described there.
exec "$(dirname "$0")/fuzz.sh" state "$@"
