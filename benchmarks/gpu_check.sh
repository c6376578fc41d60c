#!/usr/bin/env bash
# One command for a single H100 / H200 (issue 16 item 4): training step (plain, ZeRO-2, ZeRO-3
# through accelerate), live-length vs fixed-buffer sampling and fast sampling of a random 1B
# LLaDA-shaped FlexMDM, with peak memory; every figure in one JSON. Nothing is downloaded.
#   bash benchmarks/gpu_check.sh                      # writes gpu_check.json
#   bash benchmarks/gpu_check.sh --output out.json    # or: --smoke (CPU, tiny shape)
# PYTHON picks the interpreter (default: .venv/bin/python if present, else python).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
"$PYTHON" -c "import retrofit, torch, accelerate, deepspeed" 2>/dev/null || {
  echo "gpu_check: retrofit, torch, accelerate and deepspeed must import with $PYTHON; run make install" >&2
  exit 2
}
exec "$PYTHON" benchmarks/gpu_check.py "$@"
