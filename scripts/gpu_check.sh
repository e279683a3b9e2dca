#!/usr/bin/env bash
# The GPU check (docs/integrations.md#the-gpu-check): bench train and bench train --engine trl for
# a few steps on SmolLM2-135M's architecture with random weights, offline, on one CUDA GPU.
# It checks that policy, update and generation ran on the GPU and prints step time, generation
# tokens/s and peak GPU memory per engine.
#
#   scripts/gpu_check.sh                       # needs torch (CUDA), transformers, numba, trl
#   scripts/gpu_check.sh --wheels DIR          # trl absent: install it (and datasets) from DIR
#   scripts/gpu_check.sh --cpu --layers 2 --steps 1 --budget 8   # the CPU path
# Other options go to scripts/gpu_check.py (--help).
set -euo pipefail
cd "$(dirname "$0")/.."
wheels=""
if [[ "${1:-}" == "--wheels" ]]; then
  wheels="${2:?--wheels needs a folder of wheel files}"
  shift 2
fi
missing=$(python - <<'PY'
import importlib.util
need = ["torch", "transformers", "numba", "numpy", "pandas", "click", "rich", "scipy", "accelerate"]
print(" ".join(m for m in need if importlib.util.find_spec(m) is None))
PY
)
if [[ -n "$missing" ]]; then
  echo "Error: missing Python packages: $missing" >&2
  exit 2
fi
if ! python -c "import trl" 2>/dev/null; then
  if [[ -z "$wheels" ]]; then
    echo "Error: trl is not installed and there is no internet: bring the wheels of trl 1.16" \
      "and datasets and run scripts/gpu_check.sh --wheels DIR" >&2
    exit 2
  fi
  pip install --no-index --find-links "$wheels" 'trl>=1.16,<1.17'
fi
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec python scripts/gpu_check.py "$@"
