#!/usr/bin/env bash
# Sets everything up, then runs the main demo: the seed's XenServer VLAN example.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/hvsim demo "$@"
