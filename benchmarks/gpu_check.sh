#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py) with the project's virtual environment and a time limit.
#   bash benchmarks/gpu_check.sh                          # on a CUDA machine: workflow, stage steps, DDP
#   bash benchmarks/gpu_check.sh --device cpu --tiny      # tiny shapes on a CPU (well under a minute)
#   bash benchmarks/gpu_check.sh --skip-workflow          # only the stage steps (and DDP)
#   bash benchmarks/gpu_check.sh --skip-workflow --skip-stages --skip-ddp --scale-table
#                                                         # only benchmarks/memory.py's table measured on
#                                                         # the GPU: peak memory and s / step per stage/pass
# Every other option: bash benchmarks/gpu_check.sh --help. The time limit in seconds is GPU_CHECK_TIMEOUT
# (default 570: inside a 10-minute job); on SIGTERM the check still prints the table of what finished.
# PYTHON overrides the interpreter (default: .venv/bin/python, else python3 on PATH).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
if [[ ! -x "$python" ]]; then
    python="$(command -v python3)"
fi
export PATH="$(dirname "$python"):$PATH"     # snakemake's jobs find the same python
export PYTHONUNBUFFERED=1
exec timeout --kill-after=30 "${GPU_CHECK_TIMEOUT:-570}" "$python" "$repo/benchmarks/gpu_check.py" "$@"
