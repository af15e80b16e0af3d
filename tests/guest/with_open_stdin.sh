#!/usr/bin/env bash
# Runs a command with a stdin that stays open (and empty) until the command ends, as a terminal
# would, so that a test can stop it with a signal while it waits for input.
set -u
exec "$@" < <(sleep 3600)
