#!/usr/bin/env bash
# Fuzzes vmm-agent's identity file parser (tests/fuzz/agent_identity_fuzz.cpp,
# guest-images/linux/vmm-agent/identity.c) with libFuzzer for SECONDS (default 60):
#
#   scripts/fuzz-agent-identity.sh [SECONDS] [extra libFuzzer options...]
#
# The same as scripts/fuzz.sh agent-identity [SECONDS] [...]: seeds, environment and exit status are
# described there.
exec "$(dirname "$0")/fuzz.sh" agent-identity "$@"
