#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU: XLS-R-300M-shaped CTC fine-tuning speed (bench/gpu.py) in under
# 8 minutes, its table written to one file.
#   bench/gpu.sh                 # GPU: table in $OUT/gpu-results.md when $OUT is set, else bench/gpu-results.md
#   bench/gpu.sh --tiny          # CPU smoke run (tests/test_scale.py runs gpu.py --tiny)
#   bench/gpu.sh --record        # also write the table into bench/RESULTS.md (section gpu)
# Python: $PYTHON, else .venv/bin/python, else python3. Missing packages are pip-installed from the index when it
# can be reached; without one the interpreter is used as it is (torch with CUDA, transformers >= 5, soundfile, soxr).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  for c in .venv/bin/python python3 python; do
    if command -v "$c" >/dev/null 2>&1; then PY="$c"; break; fi
  done
fi
[ -n "$PY" ] || { echo "gpu.sh: no python found (set PYTHON=...)" >&2; exit 2; }
missing=$("$PY" - <<'PYEOF'
import importlib.util
need = {"torch": "torch", "transformers": "transformers>=5", "soundfile": "soundfile", "soxr": "soxr", "numpy": "numpy"}
print(" ".join(v for k, v in need.items() if importlib.util.find_spec(k) is None))
PYEOF
)
if [ -n "$missing" ]; then
  echo "gpu.sh: installing $missing" >&2
  timeout 120 "$PY" -m pip install --quiet $missing || echo "gpu.sh: could not install $missing (no package index?); trying as is" >&2
fi
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")'
dest="${OUT:-bench}/gpu-results.md"
budget=360
case " $* " in *" --tiny "*) budget=60 ;; esac
exec timeout 470 "$PY" bench/gpu.py --out "$dest" --budget-s "$budget" "$@"
