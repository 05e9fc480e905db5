#!/usr/bin/env bash
# Set up the environment and run the test suite (CPU only, about 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
python="$(bash scripts/setup_env.sh)"
exec "$python" -m pytest "$@"
