#!/usr/bin/env bash
# The README's test command: installs everything it needs (torch 2.13.0 CPU first), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q torch==2.13.0
python3 -m pip install -q -e '.[test]'
# The serve page test (tests/unit/serve/test_serve_page.py) drives Debian's chromium through
# chromium-driver with Selenium: installed here when absent (no browser download of its own).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi
python3 -m pytest -q -m "not slow" tests "$@"
