#!/usr/bin/env bash
# Fuzzes the vCPU exit handler (tests/fuzz/exit_fuzz.cpp, vmm/exit_handler.cpp) with libFuzzer for
# SECONDS (default 60):
#
#   scripts/fuzz-exit.sh [SECONDS] [extra libFuzzer options...]
#
# The same as scripts/fuzz.sh exit [SECONDS] [...]: seeds, environment and exit status are
# described there.
exec "$(dirname "$0")/fuzz.sh" exit "$@"
