#!/usr/bin/env bash
# The README's test command: sets up a fresh machine and runs formatting, lint, types and the
# test suite (integration tests against real local servers, e2e checks with promtool).
# Extra arguments go to pytest, e.g. `bash tests/run.sh -k reload`.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests drive for real: promtool and prometheus (prometheus), amtool and
# alertmanager (prometheus-alertmanager), systemd-analyze (systemd), a CONNECT proxy (tinyproxy),
# a headless browser for the status page (chromium), flite and sox (the speech fixtures are
# regenerated to check they reproduce), tcpdump (the wire-error harness captures loopback).
missing=()
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || missing+=(prometheus-alertmanager)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
command -v tinyproxy >/dev/null 2>&1 || missing+=(tinyproxy)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v flite >/dev/null 2>&1 || missing+=(flite)
command -v sox >/dev/null 2>&1 || missing+=(sox)
command -v tcpdump >/dev/null 2>&1 || missing+=(tcpdump)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "== installing Debian packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # Packaged services start on install; the tests run their own copies on free ports.
    for unit in "${missing[@]}"; do systemctl stop "$unit" >/dev/null 2>&1 || true; done
  else
    echo "missing Debian packages: ${missing[*]}; run as root, or: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
fi

echo "== python environment (.venv)"
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev,webrtc]'

echo "== ruff format / ruff check / mypy --strict"
.venv/bin/ruff format --check probed tests
.venv/bin/ruff check probed tests
.venv/bin/mypy

echo "== pytest"
.venv/bin/python -m pytest "$@"
