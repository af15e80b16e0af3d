#!/usr/bin/env bash
# Fuzzes a template's manifest.json and a clone's clone.json (tests/fuzz/manifest_fuzz.cpp,
# clone/template.cpp) with libFuzzer for SECONDS (default 60):
#
#   scripts/fuzz-manifest.sh [SECONDS] [extra libFuzzer options...]
#
# The same as scripts/fuzz.sh manifest [SECONDS] [...]: seeds, environment and exit status are
# described there.
exec "$(dirname "$0")/fuzz.sh" manifest "$@"
