#!/usr/bin/env bash
# Execute every experiment notebook (nbs/experiments/*.ipynb) with its FULL setting on a CUDA GPU, save the notebooks
# in place with their outputs, then nbdev_clean them. Works with no network.
#
# Usage, from anywhere inside the repository:
#
#     tools/run_gpu_experiments.sh [--jobs N] [--deadline S] [--pack FILE] [--log-dir DIR] [--wheels DIR] [--data DIR]
#                                  [--keep-going] [--allow-cpu] [NOTEBOOK ...]
#
#   --jobs N      run up to N notebooks at once (default 1). The FULL networks leave a large GPU mostly idle, and
#                 each notebook already runs 4 runs at a time, so 2-3 notebooks at once (8-12 processes) fill a
#                 16-core machine; tools/gpu_pilot.py measures what sharing the device costs.
#   --deadline S  stop S seconds after the first notebook starts: none starts later, and one still running then is
#                 interrupted (SIGINT, then killed 20 s later) and counts as failed, "stopped at the deadline". Its
#                 finished runs stay under runs/, so a rerun of the same notebook reuses them; its runs in flight
#                 checkpoint the step they reached (SIGINT is held until the step ends), and a rerun on the same
#                 machine goes on from there. --pack does not carry those checkpoints (tens of MB each at FULL), so
#                 on another machine such a run starts over. Default: no deadline. SIGTERM or SIGINT to this script
#                 (or to its whole process group) does the same at once: no notebook starts later, those running are
#                 interrupted ("stopped by a signal"), and --pack still runs.
#   --pack FILE   at the end, write one .tar.gz holding the notebooks that finished, the logs and summary.tsv (under
#                 gpu-logs/), and every finished run beside the notebooks (each folder under runs/ with a done.json:
#                 its rows and records, not its checkpoint; an unfinished run is not packed at all). Paths inside are
#                 relative to the repository root (a notebook outside it: to its folder's parent), so `tar xzf FILE`
#                 there puts the notebooks in place and lets a later run reuse the finished runs. For machines that
#                 give back only a few files. The pack is written even when nbdev_clean fails (which makes the exit
#                 status 1).
#   --log-dir DIR each notebook's output goes to DIR/NAME.log and its exit status and seconds to DIR/NAME.status
#                 (default: a new folder under /tmp, printed at the start); a summary table goes to DIR/summary.tsv.
#   --wheels DIR  optional: a folder of wheels adding nbdev/execnb/IPython, for a GPU machine without network that
#                 lacks them (default: $GPU_WHEELS); not needed where `pip install -e ".[dev]"` was run, and skipped
#                 whenever `import nbdev, execnb` already works. They are installed with `pip --no-index --no-deps
#                 --target` into a private folder (never into the system's site-packages) that is put on PYTHONPATH
#                 together with the repository.
#   --data DIR    optional: the folder holding Fashion-MNIST's four IDX .gz files, needed only where the data set is
#                 not where the loader looks by itself ($SUBSPACE_OPT_DATA, else Debian's /usr/share/datasets);
#                 exported as SUBSPACE_OPT_DATA.
#   --keep-going  a failing cell (say, an outcome a FULL run does not reach) does not stop its notebook: every cell
#                 runs and the notebook is saved with the error in its outputs, counted as failed ("cells failed",
#                 exit 3 in its .status) and packed with those that finished. Default: stop at the first failing cell
#                 and leave that notebook unsaved.
#   --allow-cpu   run without a CUDA device and without Fashion-MNIST: the `cuda` cells are then skipped, so the
#                 notebooks run their SMALL setting (a check of this script on a CPU, not a FULL run).
#   NOTEBOOK ...  run only these notebooks (default: every nbs/experiments/*.ipynb, in name order).
#
# Each notebook runs in its own folder (so its `runs/` lands beside it, git-ignored) through tools/execute_notebooks.py,
# which on a CUDA machine executes the `#| cuda` cells, i.e. `P = FULL`. The script fails loudly when torch sees no
# CUDA device (unless --allow-cpu); a failing notebook does not stop the others, but makes the exit status 1 and is
# named at the end with the tail of its log. Every notebook's wall time and the total are printed. Results are
# resumable: rerunning after an interruption reuses the finished runs under nbs/experiments/runs/*/full.
# First run tools/gpu_pilot.py (about 90 s): it times each kind of step of the FULL settings on this device.
# Budget: aimed at about 8 minutes of one H100/H200 for the whole set with --jobs 3; the per-notebook estimates (in
# each notebook's Parameters section, none measured yet) add up to roughly 12-16 minutes one after another, so the
# first GPU run's printed wall times are what the FULL settings should be trimmed from.
set -euo pipefail
trap '' PIPE  # a write to a closed output fails instead of killing the script before it packs
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WHEELS="${GPU_WHEELS:-}"
DATA="${SUBSPACE_OPT_DATA:-}"
JOBS=1
DEADLINE=""
PACK=""
LOGDIR=""
ALLOW_CPU=0
KEEP=()
NBS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    --deadline) DEADLINE="$2"; shift 2 ;;
    --pack) PACK="$2"; shift 2 ;;
    --log-dir) LOGDIR="$2"; shift 2 ;;
    --allow-cpu) ALLOW_CPU=1; shift ;;
    --keep-going) KEEP=(--keep-going); shift ;;
    -h|--help) sed -n '2,/^set -e/{/^set -e/!p}' "$0"; exit 0 ;;
    -*) echo "FAIL: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) NBS+=("$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"); shift ;;
  esac
done
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "FAIL: --jobs must be an int >= 1, got '$JOBS'" >&2; exit 2; }
[ -z "$DEADLINE" ] || [[ "$DEADLINE" =~ ^[1-9][0-9]*$ ]] \
  || { echo "FAIL: --deadline must be a whole number of seconds >= 1, got '$DEADLINE'" >&2; exit 2; }
if [ -n "$PACK" ]; then
  [[ "$PACK" == *.tar.gz ]] || { echo "FAIL: --pack must name a .tar.gz file, got '$PACK'" >&2; exit 2; }
  [ -d "$(dirname "$PACK")" ] || { echo "FAIL: --pack: no folder $(dirname "$PACK")" >&2; exit 2; }
  PACK="$(cd "$(dirname "$PACK")" && pwd)/$(basename "$PACK")"
fi
for nb in "${NBS[@]}"; do
  [ -f "$nb" ] || { echo "FAIL: no notebook $nb" >&2; exit 2; }
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
if [ "$ALLOW_CPU" = 0 ]; then  # the FULL settings need Fashion-MNIST and a GPU
  "$PY" -c "from subspace_opt.data import load_fashion_mnist; load_fashion_mnist(n_train=10, n_test=10, device='cpu')" \
    || { echo "FAIL: cannot load Fashion-MNIST (error above): pass --data DIR or set SUBSPACE_OPT_DATA" >&2; exit 1; }
  "$PY" - <<'PYEOF' || { echo "FAIL: no CUDA device visible to torch; the FULL settings are meant for a GPU (--allow-cpu runs SMALL)" >&2; exit 1; }
import torch, sys
if not torch.cuda.is_available(): sys.exit(1)
print(f"CUDA device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
PYEOF
fi

[ ${#NBS[@]} -gt 0 ] || NBS=("$REPO"/nbs/experiments/*.ipynb)
[ -n "$LOGDIR" ] || LOGDIR="$(mktemp -d /tmp/subspace-opt-gpu-logs.XXXXXX)"
mkdir -p "$LOGDIR"
LOGDIR="$(cd "$LOGDIR" && pwd)"
echo "== ${#NBS[@]} notebooks, up to $JOBS at once; logs in $LOGDIR"

run_one() {  # one notebook, in its own folder, within `left` seconds if given; its log, "status seconds" in NAME.status
  local nb="$1" left="$2" name t0 rc pid signalled limit=()
  name="$(basename "$nb" .ipynb)"
  t0=$SECONDS
  [ -z "$left" ] || limit=(timeout --signal=INT --kill-after=20 "$left")
  trap 'signalled=1' TERM  # a SIGTERM to the process group: this waits on, to record how the notebook ended
  (cd "$(dirname "$nb")" && exec ${limit[@]+"${limit[@]}"} "$PY" "$REPO/tools/execute_notebooks.py" ${KEEP[@]+"${KEEP[@]}"} "$(basename "$nb")") \
    > "$LOGDIR/$name.log" 2>&1 &
  pid=$!
  echo "$pid" > "$LOGDIR/$name.pid"  # `timeout` (or the notebook's process): what a signal to this script interrupts
  [ ! -e "$LOGDIR/.stopped" ] || kill -INT "$pid" 2>/dev/null || true  # stopped before its pid was written
  while :; do  # a trapped signal ends `wait` early: wait on
    signalled=0 rc=0
    wait "$pid" || rc=$?
    [ "$signalled" = 1 ] || break
  done
  rm -f "$LOGDIR/$name.pid"
  if [ -n "$left" ] && { [ "$rc" = 124 ] || [ "$rc" = 137 ]; } && [ $((SECONDS - t0)) -ge "$left" ]; then
    rc=deadline  # `timeout` stopped it
  fi
  [ "$rc" = 0 ] || [ ! -e "$LOGDIR/.stopped" ] || rc=stopped
  echo "$rc $((SECONDS - t0))" > "$LOGDIR/$name.status"
  case "$rc" in
    0) echo "== $name: done in $((SECONDS - t0)) s" ;;
    deadline) echo "== $name: FAILED (stopped at the deadline) after $((SECONDS - t0)) s" ;;
    stopped) echo "== $name: FAILED (stopped by a signal) after $((SECONDS - t0)) s" ;;
    3) echo "== $name: FAILED (cells failed; saved with their errors) in $((SECONDS - t0)) s" ;;
    *) echo "== $name: FAILED (exit $rc) in $((SECONDS - t0)) s" ;;
  esac
}

stop() {  # SIGTERM or SIGINT: interrupt the notebooks as a deadline would (SIGINT), start no other, pack at the end
  [ ! -e "$LOGDIR/.stopped" ] || return 0  # stopping already (the signal came twice: to the group and from a parent)
  touch "$LOGDIR/.stopped"
  echo "== stopped by a signal: interrupting the notebooks" || true
  for f in "$LOGDIR"/*.pid; do [ ! -e "$f" ] || kill -INT "$(cat "$f")" 2>/dev/null || true; done
}
rm -f "$LOGDIR/.stopped"
trap stop TERM INT
t_all=$SECONDS
for nb in "${NBS[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || true; done
  if [ -e "$LOGDIR/.stopped" ]; then
    echo "not-started 0" > "$LOGDIR/$(basename "$nb" .ipynb).status"
    echo "== $(basename "$nb" .ipynb): not started (stopped by a signal)"
    continue
  fi
  left=""
  if [ -n "$DEADLINE" ]; then
    left=$((DEADLINE - (SECONDS - t_all)))
    if [ "$left" -le 0 ]; then  # past the deadline: not started
      echo "not-started 0" > "$LOGDIR/$(basename "$nb" .ipynb).status"
      echo "== $(basename "$nb" .ipynb): not started (the deadline of $DEADLINE s has passed)"
      continue
    fi
  fi
  echo "== $(basename "$nb" .ipynb): started at $((SECONDS - t_all)) s"
  run_one "$nb" "$left" &
done
until wait; do :; done  # a trapped signal ends `wait` early (a status above 128): wait on
trap - TERM INT
total=$((SECONDS - t_all))

failed=()
printf 'notebook\texit\tseconds\n' > "$LOGDIR/summary.tsv"
for nb in "${NBS[@]}"; do
  name="$(basename "$nb" .ipynb)"
  read -r rc secs < "$LOGDIR/$name.status" || { rc=missing; secs=NA; }
  printf '%s\t%s\t%s\n' "$name" "$rc" "$secs" >> "$LOGDIR/summary.tsv"
  [ "$rc" = 0 ] || failed+=("$name")
done
printf 'all\t%s\t%s\n' "${#failed[@]}" "$total" >> "$LOGDIR/summary.tsv"
echo "== all ${#NBS[@]} notebooks: $total s with up to $JOBS at once (summary: $LOGDIR/summary.tsv)"
cleaned=1  # a failing nbdev_clean still leaves the notebooks and runs to pack
"$PY" -c "import sys; from nbdev.clean import nbdev_clean; [nbdev_clean(fname=f) for f in sys.argv[1:]]" "${NBS[@]}" \
  || { cleaned=0; echo "FAIL: nbdev_clean failed (error above): the notebooks are saved but not cleaned" >&2; }
if [ -n "$PACK" ]; then
  done_nbs=()
  for nb in "${NBS[@]}"; do
    read -r rc _ < "$LOGDIR/$(basename "$nb" .ipynb).status" 2>/dev/null && { [ "$rc" = 0 ] || [ "$rc" = 3 ]; } \
      && done_nbs+=("$nb")  # finished, or (--keep-going) ran to the end with failed cells
  done
  "$PY" "$REPO/tools/pack_results.py" --repo "$REPO" --logs "$LOGDIR" --out "$PACK" --runs-beside "${NBS[@]}" \
    --notebooks "${done_nbs[@]}"
fi
if [ ${#failed[@]} -gt 0 ]; then
  for name in "${failed[@]}"; do
    [ -e "$LOGDIR/$name.log" ] || continue  # not started
    echo "== $name failed; the end of $LOGDIR/$name.log:" >&2
    tail -20 "$LOGDIR/$name.log" >&2
  done
  echo "FAIL: ${#failed[@]} of ${#NBS[@]} notebooks failed or did not start: ${failed[*]}" >&2
  exit 1
fi
[ "$cleaned" = 1 ] || exit 1
echo "done: executed notebooks saved in place and cleaned; review with git diff, then commit nbs/experiments/*.ipynb"
