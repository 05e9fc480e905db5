#!/usr/bin/env bash
# Set up the environment and run the whole test suite, every tier (CPU only; target: 6 minutes on
# 2 idle cores).  The edit loop is `bash test.sh -m "not slow"` (target: 90 s); README, "Tests: tiers".
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
python="$(bash scripts/setup_env.sh)"
exec "$python" -m pytest "$@"
