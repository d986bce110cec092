#!/usr/bin/env bash
# Everything the package needs a CUDA GPU for, in one run that ends within a time budget: the CUDA tests, the pilot
# that times the FULL settings' steps, then the experiment notebooks' FULL settings, with what came out packed into
# one folder. For a GPU machine without network, where every minute counts.
#
# Usage, from anywhere inside the repository:
#
#     tools/gpu_session.sh --out DIR --budget SECONDS [--jobs N] [--wheels DIR] [--data DIR] [--resume FILE]
#                          [--reserve SECONDS] [--no-tests] [--no-pilot] [--no-bench] [NOTEBOOK ...]
#
#   --out DIR        where everything lands (created): session.log (this script's output), tests.log (pytest -m cuda
#                    and nbdev_test --flags cuda on each library notebook with a `#| cuda` cell), pilot.csv,
#                    parts.csv, stacked.csv and pilot.json (tools/gpu_pilot.py), refresh.csv and refresh.json (tools/refresh_bench.py: a warm
#                    refresh of the tracker against a cold eigsh on this device), benchmarks/B05_compiled_products.ipynb
#                    (that benchmark executed here: compiled curvature products against uncompiled ones on this
#                    device), gpu.csv (nvidia-smi's load and memory every 10 s), notebook-logs/ (each notebook's
#                    log and exit status as it is written, so they come back even if packing never happens) and
#                    results.tar.gz (tools/run_gpu_experiments.sh --pack: the executed notebooks, their logs and
#                    finished runs; `tar xzf` it in the repository root). The exit status is 1 when a test, the pilot
#                    or a notebook failed.
#   --budget S       the whole run ends within S seconds: each stage before the notebooks runs within its own cap
#                    (tests 240 s, pilot and refresh benchmark 150 s each, B05 240 s) and within what is left of the
#                    budget less the notebooks' reserve, and is skipped (a failure) when less than 20 s would be
#                    left; the notebooks get what the stages leave, less 60 s to stop them and pack
#                    (run_gpu_experiments.sh --deadline), and are run with --keep-going, so a notebook whose checked
#                    outcome fails at FULL is still saved with its tables and figures. The exit status is 1 too when
#                    pytest itself ends badly (a crash, its timeout). A stage that ignores its stop is killed 15 s
#                    later. Stopped by SIGTERM or SIGINT (sent to this script alone or to its whole process group, as
#                    Ctrl-C, `timeout` or a job runner do), the script interrupts the notebooks, packs the runs
#                    finished so far into results.tar.gz and exits with status 143; a stage running then is
#                    waited for.
#   --reserve S      seconds of the budget the stages must leave to the notebooks (default: half the budget).
#   --jobs N         notebooks at once (default 2; each already runs several runs at once).
#   --wheels DIR     a folder of wheels adding nbdev/execnb/IPython (installed with --no-index into a private folder).
#                    Whether they import, from this folder or without it, is checked before any stage, and so is
#                    Fashion-MNIST (unless --allow-cpu): a machine that lacks either fails at once.
#   --data DIR       the folder holding Fashion-MNIST's four IDX .gz files (exported as SUBSPACE_OPT_DATA).
#   --resume FILE    the results.tar.gz of an earlier run: its finished runs (files under nbs/**/runs/ only; nothing
#                    else, and nothing outside the repository, is taken from it) are checked and unpacked at once,
#                    before any stage, so they are reused instead of rerun. An archive that cannot be read, holds a
#                    path that is not plain and relative, or holds no file under nbs/**/runs/ (say, one made inside
#                    nbs/experiments) is refused (exit status 2). A FULL set longer than one machine's time can then
#                    be finished over several runs, each resuming from the last one's archive: only finished runs
#                    carry over (the archive holds no checkpoints, tens of MB each at FULL), so a run interrupted on
#                    one machine starts over on the next.
#   --no-tests, --no-pilot, --no-bench   skip those stages (say, on a second run that only resumes the notebooks).
#   --allow-cpu      a check of this script on a CPU: no CUDA flag for nbdev_test, the pilot's and the refresh
#                    benchmark's --small setting (the benchmark on digits only), and
#                    the notebooks' SMALL setting (run_gpu_experiments.sh --allow-cpu).
#   NOTEBOOK ...     the notebooks to run, in this order (default: every nbs/experiments/E*.ipynb in name order).
#                    Finished runs under each notebook's runs/ are reused, so a second run resumes the first.
set -uo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
OUTDIR=""
BUDGET=""
JOBS=2
WHEELS=""
DATA=""
RESUME=""
RESERVE=""
TESTS=1
PILOT=1
BENCH=1
BENCH_ARGS=()
FLAGS=cuda
PILOT_ARGS=()
CPU=()
NBS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUTDIR="$2"; shift 2 ;;
    --budget) BUDGET="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    --wheels) WHEELS="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --resume) RESUME="$2"; shift 2 ;;
    --reserve) RESERVE="$2"; shift 2 ;;
    --no-tests) TESTS=0; shift ;;
    --no-pilot) PILOT=0; shift ;;
    --no-bench) BENCH=0; shift ;;
    --allow-cpu) FLAGS=""; PILOT_ARGS=(--small --repeats 3 --workers 2); BENCH_ARGS=(--small --repeats 1 --data digits)
      CPU=(--allow-cpu); shift ;;
    -h|--help) sed -n '2,/^set -uo/{/^set -uo/!p}' "$0"; exit 0 ;;
    -*) echo "FAIL: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) [ -f "$1" ] || { echo "FAIL: no notebook $1" >&2; exit 2; }
      NBS+=("$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"); shift ;;
  esac
done
[ -n "$OUTDIR" ] || { echo "FAIL: --out DIR is required" >&2; exit 2; }
[[ "$BUDGET" =~ ^[1-9][0-9]*$ ]] || { echo "FAIL: --budget must be a whole number of seconds >= 1, got '$BUDGET'" >&2; exit 2; }
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "FAIL: --jobs must be an int >= 1, got '$JOBS'" >&2; exit 2; }
[ -n "$RESERVE" ] || RESERVE=$((BUDGET / 2))
[[ "$RESERVE" =~ ^[0-9]+$ ]] && [ "$RESERVE" -le "$BUDGET" ] \
  || { echo "FAIL: --reserve must be a whole number of seconds from 0 to the budget, got '$RESERVE'" >&2; exit 2; }
mkdir -p "$OUTDIR" && OUTDIR="$(cd "$OUTDIR" && pwd)"
[ -z "$RESUME" ] || [ -f "$RESUME" ] || { echo "FAIL: --resume: no file $RESUME" >&2; exit 2; }
[ -z "$RESUME" ] || RESUME="$(cd "$(dirname "$RESUME")" && pwd)/$(basename "$RESUME")"
for d in DATA WHEELS; do  # absolute, from where the script was called: the notebooks run in their own folders
  [ -z "${!d}" ] || [ -d "${!d}" ] || { echo "FAIL: --${d,,}: no folder ${!d}" >&2; exit 2; }
  [ -z "${!d}" ] || printf -v "$d" '%s' "$(cd "${!d}" && pwd)"
done
[ -z "$DATA" ] || [ -e "$DATA/train-images-idx3-ubyte.gz" ] || [ -e "$DATA/fashion-mnist/train-images-idx3-ubyte.gz" ] \
  || { echo "FAIL: --data: no Fashion-MNIST IDX files in $DATA (train-images-idx3-ubyte.gz)" >&2; exit 2; }
[ ${#NBS[@]} -gt 0 ] || NBS=("$REPO"/nbs/experiments/E*.ipynb)
PY="${PYTHON:-python3}"
export PYTHON="$PY"  # run_gpu_experiments.sh runs the notebooks with the interpreter checked here
resumed=""
if [ -n "$RESUME" ]; then  # at once, before any stage spends the budget; refused whole when anything is amiss
  resumed="$("$PY" - "$RESUME" "$REPO" <<'PYEOF'
import shutil, sys, tempfile
from pathlib import Path
src, repo = sys.argv[1], sys.argv[2]
sys.path.insert(0, repo)  # the package of this repository (its checks of untrusted archives)
from subspace_opt.config import UserError
from subspace_opt.runfolder import unpack_runs
with tempfile.TemporaryDirectory() as tmp:
    try:  # whole or nothing: links, '..', absolute paths, unsafe names, a cut or damaged file are refused
        files = [f.relative_to(tmp) for f in unpack_runs(src, tmp)]
    except UserError as e:
        sys.stderr.write(f"FAIL: --resume: {e}\n")
        sys.exit(2)
    runs = [f for f in files if f.parts[0] == "nbs" and "runs" in f.parts[:-1]]  # not its notebooks or logs
    if not runs:
        sys.stderr.write(f"FAIL: --resume: {src} holds no file under nbs/**/runs/ (paths start at the repository root)\n")
        sys.exit(2)
    for f in runs:
        Path(repo, f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(tmp, f), Path(repo, f))
print(f"== resumed {len(runs)} files of finished runs from {src}")
PYEOF
)" || { rc=$?; [ "$rc" = 2 ] || echo "FAIL: --resume: could not unpack $RESUME (error above)" >&2; exit "$rc"; }
fi
trap '' PIPE  # a write to a closed output fails instead of killing the script, so the signal handler still packs
exec > >(trap '' INT TERM; exec tee -a "$OUTDIR/session.log") 2>&1  # tee outlives a signal to the process group
cd "$REPO"
[ -z "$resumed" ] || echo "$resumed"
t0=$SECONDS
status=0  # 1 when a test, the pilot or a notebook failed
left() { echo $((BUDGET - (SECONDS - t0))); }
stage_time() {  # seconds a stage may take: its own cap $1, within what is left of the budget less the reserve
  local t=$(($(left) - 30 - RESERVE))
  [ "$t" -lt "$1" ] || t=$1
  echo "$t"
}
export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "$WHEELS" ] && ! "$PY" -c "import nbdev, execnb, IPython" 2>/dev/null; then
  SITE="$(mktemp -d /tmp/subspace-opt-site.XXXXXX)"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="$PYTHONPATH:$SITE"  # after the repository and before the system: only what the system lacks
  export PATH="$SITE/bin:$PATH"
fi
"$PY" -c "import nbdev, execnb, IPython" || { echo "FAIL: cannot import nbdev, execnb and IPython (error above)\
${WHEELS:+, even with the wheels of $WHEELS}: pass --wheels DIR holding their wheels"; exit 1; }
[ -z "$DATA" ] || export SUBSPACE_OPT_DATA="$DATA"
"$PY" -c "import torch, subspace_opt; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|', \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU', '| subspace_opt', subspace_opt.__version__)" \
  || { echo "FAIL: cannot import torch and subspace_opt"; exit 1; }
[ ${#CPU[@]} -gt 0 ] || "$PY" -c "import sys, torch; sys.exit(not torch.cuda.is_available())" \
  || { echo "FAIL: no CUDA device visible to torch (--allow-cpu checks this script on a CPU)"; exit 1; }
[ ${#CPU[@]} -gt 0 ] || "$PY" -c "from subspace_opt.data import load_fashion_mnist; load_fashion_mnist(n_train=10, \
n_test=10, device='cpu')" || { echo "FAIL: cannot load Fashion-MNIST (error above): pass --data DIR"; exit 1; }
running() {  # the notebooks still running: the pids (each `timeout`, leading its own group) in the log folder
  local f pid
  for f in "$OUTDIR"/notebook-logs/*.pid; do
    [ -e "$f" ] && read -r pid < "$f" && kill -0 "$pid" 2>/dev/null && echo "$pid"
  done
}
on_signal() {  # stopped from outside: stop the notebooks, pack what finished, and go (a stage is waited for)
  trap '' TERM INT  # a second signal (say, to the whole group) changes nothing: the packing goes on
  echo "== $((SECONDS - t0)) s: stopped by a signal; packing the finished runs into results.tar.gz"
  local pid i
  if [ -n "${child:-}" ] && kill -0 "$child" 2>/dev/null; then  # it interrupts its notebooks, then packs
    kill -TERM "$child" 2>/dev/null
  else  # gone: the notebooks are interrupted from here (SIGINT, as at a deadline)
    for pid in $(running); do kill -INT "$pid" 2>/dev/null; done
  fi
  [ -z "${child:-}" ] || wait "$child"
  for i in $(seq 25); do [ -n "$(running)" ] || break; sleep 1; done
  for pid in $(running); do  # one that ignored its interrupt: killed, with everything in its group
    echo "== killing notebook process $pid (it ignored its interrupt)"
    kill -KILL -- "-$pid" "$pid" 2>/dev/null
  done
  [ -e "$OUTDIR/results.tar.gz" ] || "$PY" tools/pack_results.py --repo "$REPO" --logs "$OUTDIR/notebook-logs" \
    --out "$OUTDIR/results.tar.gz" --runs-beside "${NBS[@]}"
  echo "== stopped after $((SECONDS - t0)) s, exit status 143"
  exit 143
}
trap on_signal TERM INT
if command -v nvidia-smi >/dev/null; then  # sampled until this script ends, however it ends
  nvidia-smi --query-gpu=timestamp,name,utilization.gpu,memory.used,clocks.sm --format=csv -l 10 \
    > "$OUTDIR/gpu.csv" 2>/dev/null &
  trap "kill $! 2>/dev/null" EXIT
fi

if [ "$TESTS" = 1 ] && [ "$(stage_time 240)" -lt 20 ]; then
  echo "SKIPPED: the CUDA tests (no time left in the budget)"; status=1
elif [ "$TESTS" = 1 ]; then
  T=$(stage_time 240)
  echo "== $((SECONDS - t0)) s: CUDA tests (pytest -m cuda; nbdev_test --flags cuda; at most $T s), log in tests.log"
  (
    { timeout -k 15 "$T" "$PY" -m pytest -q -p no:cacheprovider -m cuda tests 2>&1; echo "exit status $?"; } \
      | sed 's/^/[pytest] /' &
    for nb in $(grep -l '#| cuda' nbs/[0-9]*.ipynb); do
      (timeout -k 15 "$T" "$PY" -c "import sys; from nbdev.test import nbdev_test; nbdev_test(path=sys.argv[1], flags='$FLAGS', \
do_print=True)" "$nb" 2>&1 || echo "FAILED: $nb") \
        | sed "s|^|[$(basename "$nb")] |" &
    done
    wait
  ) > "$OUTDIR/tests.log" 2>&1
  grep -E "passed|failed|FAILED|Error|exit status" "$OUTDIR/tests.log" | tail -20
  ! grep -qE "^\[pytest\] .*[0-9]+ (failed|error)|FAILED: " "$OUTDIR/tests.log" || status=1
  # a crash, a timeout or an internal error prints no summary: pytest's own status decides (5: no test selected)
  grep -qE "^\[pytest\] exit status (0|5)$" "$OUTDIR/tests.log" || { echo "FAILED: pytest (see tests.log)"; status=1; }
fi
if [ "$PILOT" = 1 ] && [ "$(stage_time 150)" -lt 20 ]; then
  echo "SKIPPED: the pilot (no time left in the budget)"; status=1
elif [ "$PILOT" = 1 ]; then
  echo "== $((SECONDS - t0)) s: pilot (tools/gpu_pilot.py)"
  timeout -k 15 "$(stage_time 150)" "$PY" tools/gpu_pilot.py ${PILOT_ARGS[@]+"${PILOT_ARGS[@]}"} --out "$OUTDIR" \
    || { echo "FAILED: the pilot"; status=1; }
fi
if [ "$BENCH" = 1 ] && [ "$(stage_time 150)" -lt 20 ]; then
  echo "SKIPPED: the benchmarks (no time left in the budget)"; status=1
elif [ "$BENCH" = 1 ]; then
  echo "== $((SECONDS - t0)) s: refresh benchmark (tools/refresh_bench.py)"
  timeout -k 15 "$(stage_time 150)" "$PY" tools/refresh_bench.py ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} --out "$OUTDIR" \
    || { echo "FAILED: the refresh benchmark"; status=1; }
  if [ "$(stage_time 240)" -ge 20 ]; then  # --keep-going: a failing cell still leaves the notebook's measurements
    echo "== $((SECONDS - t0)) s: compiled products (nbs/benchmarks/B05_compiled_products.ipynb, executed)"
    timeout -k 15 "$(stage_time 240)" "$PY" tools/execute_notebooks.py nbs/benchmarks/B05_compiled_products.ipynb \
      --keep-going --out-dir "$OUTDIR/benchmarks" || { echo "FAILED: benchmark B05"; status=1; }
  else
    echo "SKIPPED: benchmark B05 (no time left in the budget)"; status=1
  fi
fi
deadline=$(($(left) - 60))  # 30 s to pack, 20 s for run_gpu_experiments.sh's kill-after, 10 s for its start-up
echo "== $((SECONDS - t0)) s: ${#NBS[@]} notebooks, $JOBS at once, deadline $deadline s"
if [ "$deadline" -ge 30 ]; then
  logs="$OUTDIR/notebook-logs"  # in $OUT as they are written (and packed into results.tar.gz)
  mkdir -p "$logs"
  tools/run_gpu_experiments.sh ${CPU[@]+"${CPU[@]}"} --keep-going --jobs "$JOBS" --deadline "$deadline" --log-dir "$logs" \
    --pack "$OUTDIR/results.tar.gz" "${NBS[@]}" &
  child=$!
  wait "$child" || status=1
  child=""
  [ ! -e "$logs/summary.tsv" ] || cat "$logs/summary.tsv"
else
  echo "FAIL: no time left for the notebooks"
  status=1
fi
echo "== done in $((SECONDS - t0)) s, exit status $status"
exit "$status"
