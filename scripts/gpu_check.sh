#!/usr/bin/env bash
# The GPU check, one call: bash scripts/gpu_check.sh [--device cuda|cpu] [--quick] [--out DIR] [--budget S]
# Everything is in scripts/gpu_check.py (its docstring lists the steps); docs/gpu.md gives the device tool's call.
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" scripts/gpu_check.py "$@"
