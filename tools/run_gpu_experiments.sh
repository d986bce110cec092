#!/usr/bin/env bash
# Execute every experiment notebook (nbs/experiments/*.ipynb) with its FULL setting on a CUDA GPU, save the notebooks
# in place with their outputs, then nbdev_clean them. Works with no network.
#
# Usage, from anywhere inside the repository:
#
#     tools/run_gpu_experiments.sh [--wheels DIR] [--data DIR] [NOTEBOOK ...]
#
#   --wheels DIR  optional: a folder of wheels adding nbdev/execnb/IPython, for a GPU machine without network that
#                 lacks them (default: $GPU_WHEELS); not needed where `pip install -e ".[dev]"` was run, and skipped
#                 whenever `import nbdev, execnb` already works. They are installed with `pip --no-index --no-deps
#                 --target` into a private folder (never into the system's site-packages) that is put on PYTHONPATH
#                 together with the repository.
#   --data DIR    optional: the folder holding Fashion-MNIST's four IDX .gz files, needed only where the data set is
#                 not where the loader looks by itself ($SUBSPACE_OPT_DATA, else Debian's /usr/share/datasets);
#                 exported as SUBSPACE_OPT_DATA.
#   NOTEBOOK ...  run only these notebooks (default: every nbs/experiments/*.ipynb, in name order).
#
# Each notebook runs in its own folder (so its `runs/` lands beside it, git-ignored) through tools/execute_notebooks.py,
# which on a CUDA machine executes the `#| cuda` cells, i.e. `P = FULL`. The script stops at the first failing notebook,
# fails loudly when torch sees no CUDA device, and prints every notebook's wall time and the total. Results are
# resumable: rerunning after an interruption reuses the finished runs under nbs/experiments/runs/*/full.
# First run tools/gpu_pilot.py (about 90 s): it times each kind of step of the FULL settings on this device.
# Budget: aimed at about 10 minutes of one H100 for the whole set; the per-notebook estimates (in each notebook's
# Parameters section, none measured yet) add up to roughly 12-16 minutes, so the first GPU run's printed wall times are
# what the FULL settings should be trimmed from.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WHEELS="${GPU_WHEELS:-}"
DATA="${SUBSPACE_OPT_DATA:-}"
NBS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/!p}' "$0"; exit 0 ;;
    *) NBS+=("$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"); shift ;;
  esac
done
cd "$REPO"
PY="${PYTHON:-python3}"
[ -n "${PYTHON:-}" ] || [ ! -x "$REPO/.venv/bin/python" ] || PY="$REPO/.venv/bin/python"  # the README's environment
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c "import nbdev, execnb, IPython" 2>/dev/null; then
  [ -n "$WHEELS" ] && [ -d "$WHEELS" ] || { echo "FAIL: nbdev/execnb are missing: pip install -e '.[dev]', or pass --wheels DIR (their wheel files, offline)" >&2; exit 1; }
  SITE="$(mktemp -d /tmp/subspace-opt-site.XXXXXX)"
  "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE:$PYTHONPATH"
  "$PY" -c "import nbdev, execnb, IPython" || { echo "FAIL: nbdev/execnb still not importable from $SITE" >&2; exit 1; }
fi
if [ -n "$DATA" ]; then
  [ -e "$DATA/train-images-idx3-ubyte.gz" ] || [ -e "$DATA/fashion-mnist/train-images-idx3-ubyte.gz" ] \
    || { echo "FAIL: no Fashion-MNIST IDX files in $DATA (train-images-idx3-ubyte.gz)" >&2; exit 1; }
  export SUBSPACE_OPT_DATA="$DATA"
fi
"$PY" -c "from subspace_opt.data import load_fashion_mnist; load_fashion_mnist(n_train=10, n_test=10, device='cpu')" \
  || { echo "FAIL: cannot load Fashion-MNIST (error above): pass --data DIR or set SUBSPACE_OPT_DATA" >&2; exit 1; }
"$PY" - <<'PYEOF' || { echo "FAIL: no CUDA device visible to torch; the FULL settings are meant for a GPU" >&2; exit 1; }
import torch, sys
if not torch.cuda.is_available(): sys.exit(1)
print(f"CUDA device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
PYEOF

[ ${#NBS[@]} -gt 0 ] || NBS=("$REPO"/nbs/experiments/*.ipynb)
t_all=$SECONDS
for nb in "${NBS[@]}"; do
  t0=$SECONDS
  (cd "$(dirname "$nb")" && "$PY" "$REPO/tools/execute_notebooks.py" "$(basename "$nb")")
  echo "== $(basename "$nb"): $((SECONDS - t0)) s"
done
echo "== all ${#NBS[@]} notebooks: $((SECONDS - t_all)) s"
"$PY" -c "from nbdev.clean import nbdev_clean; nbdev_clean()"
echo "done: executed notebooks saved in place and cleaned; review with git diff, then commit nbs/experiments/*.ipynb"
