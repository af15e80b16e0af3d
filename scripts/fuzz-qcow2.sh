#!/usr/bin/env bash
# Fuzzes the qcow2 engine (tests/fuzz/qcow2_fuzz.cpp) with libFuzzer for SECONDS (default 60):
#
#   scripts/fuzz-qcow2.sh [SECONDS] [extra libFuzzer options...]
#
# The same as scripts/fuzz.sh qcow2 [SECONDS] [...]: seeds, environment and exit status are described there.
exec "$(dirname "$0")/fuzz.sh" qcow2 "$@"
