#!/usr/bin/env bash
# Sets everything up, then runs the whole test suite (unit, property, and interop tests against
# tshark, qemu-img, libvhdi, lvm2 and a mosquitto broker the tests start on a free loopback port).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -n 2 -q --hypothesis-profile=fixed "$@"
