#!/usr/bin/env bash
# The README's test command: installs everything it needs (torch 2.13.0 CPU first), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[test]'
python3 -m pytest -q -m "not slow" tests "$@"
