"""Run each experiment notebook's FULL setting at toy size on a CPU: the code paths FULL takes, checked before a GPU.

    python tools/dry_run_full.py                                   # every nbs/experiments/E*.ipynb
    python tools/dry_run_full.py nbs/experiments/E04_refresh_period.ipynb --out-dir /tmp/dry

The FULL settings run only on a GPU (their `#| cuda` cell sets `P = FULL`), so a mistake that only they reach — a key
the SMALL setting does not use, the CNN, Fashion-MNIST's shapes, a larger grid, a figure of more panels — would
surface only when a GPU is spent on it. This tool executes a copy of each notebook with that cell replaced by
`P = shrink(FULL)`: the same data set, networks, grids, seeds and worker processes, but `TOY` sizes (256 training
images, a few steps, a twentieth of the Hessian's samples, 4-channel CNNs), on whatever device torch finds. The
outcomes such toy runs reach mean nothing, so each `assert` is turned into a printed line (`DRY-RUN ASSERTION ...`)
and the notebook goes on; any exception a cell raises is a failure. Needs Fashion-MNIST (`$SUBSPACE_OPT_DATA` or
Debian's `dataset-fashion-mnist`) and the development install (execnb). Copies, the files beside the notebooks that
they read (such as E0's archive of finished runs), and their `runs/` go to `--out-dir` (default: a new folder under
/tmp), never beside the notebooks. Prints one line per notebook (seconds, failed
assertions, errors) and exits 1 if any cell raised.
"""

import argparse
import ast
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOY = dict(  # parameter key -> its toy value (a function of the FULL value)
    tag=lambda v: "dryrun",  # run folders runs/<experiment>/dryrun, never FULL's
    n_train=lambda v: 256,  # training images (data_args and E8's own key)
    n_hessian=lambda v: max(16, v // 20),  # samples of a subsampled Hessian
    steps=lambda v: 6,
    steps_t1=lambda v: 3,
    log_every=lambda v: 3,
    snapshot_every=lambda v: 4,
    slq_steps=lambda v: 20,
    n_probes=lambda v: 8,
    workers=lambda v: 2,
)
CNN_CHANNELS = [4]  # `hidden` of a CNN: its channels


def shrink(value, key=None):
    "`value` (a FULL dict, or part of one) with `TOY` sizes, recursively; lists are shrunk entry by entry."
    if isinstance(value, dict):
        out = {k: shrink(v, k) for k, v in value.items()}
        return {**out, "hidden": CNN_CHANNELS} if out.get("model") == "cnn" else out
    if isinstance(value, list):
        return [shrink(v, key) for v in value]
    if key in TOY and not isinstance(value, bool) and isinstance(value, (int, float, str)):
        return TOY[key](value)
    return value


class _Soften(ast.NodeTransformer):
    "`assert test, msg` becomes `if not test: print('DRY-RUN ASSERTION ...')`."

    def visit_Assert(self, node):
        text = f"DRY-RUN ASSERTION (line {node.lineno}) would fail: {ast.unparse(node.test)[:120]}"
        say = ast.Expr(ast.Call(ast.Name("print", ast.Load()), [ast.Constant(text)], []))
        return ast.copy_location(ast.If(ast.UnaryOp(ast.Not(), node.test), [say], []), node)


def soften(source: str) -> str:
    "A cell's source with its asserts printing instead of raising (unchanged when it is not plain Python)."
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics
        return source
    return ast.unparse(ast.fix_missing_locations(_Soften().visit(tree))) if "assert" in source else source


FULL_CELL = re.compile(r"^\s*#\s*\|\s*cuda\s*$", re.M)
TOY_CELL = f"import sys\nsys.path.insert(0, {str(ROOT / 'tools')!r})\nfrom dry_run_full import shrink\nP = shrink(FULL)"


def dry_run(src: Path, out_dir: Path) -> dict:
    "Execute a toy-FULL copy of notebook `src` in `out_dir`; its seconds, failed assertions and raised errors."
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell

    nb = read_nb(src)
    full = [c for c in nb.cells if c.cell_type == "code" and FULL_CELL.search(c.source)]
    if len(full) != 1 or not re.search(r"^P\s*=\s*FULL\s*$", full[0].source, re.M):
        raise SystemExit(f"dry_run_full: {src} needs exactly one `#| cuda` cell setting P = FULL")
    for c in nb.cells:
        if c.cell_type == "code":
            c.source = TOY_CELL if c is full[0] else soften(c.source)
    dest = out_dir / src.name
    write_nb(nb, dest)
    for extra in src.parent.iterdir():  # the files a notebook reads beside it: finished runs, measured tables
        if extra.is_file() and extra.suffix != ".ipynb" and not (out_dir / extra.name).exists():
            shutil.copy2(extra, out_dir / extra.name)
    home, t0 = Path.cwd(), time.perf_counter()
    os.chdir(out_dir)  # as nbdev_test does: runs/ lands beside the notebook
    try:
        CaptureShell().execute(dest, dest, exc_stop=False)
    finally:
        os.chdir(home)
    errors, asserts = [], 0
    for i, cell in enumerate(read_nb(dest).cells):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                first = (str(o["evalue"]).splitlines() or [""])[0]
                errors.append(f"cell {i}: {o['ename']}: {first[:200]}")
            elif o.get("output_type") == "stream":
                asserts += "".join(o.get("text", "")).count("DRY-RUN ASSERTION")
    return dict(seconds=time.perf_counter() - t0, asserts=asserts, errors=errors)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", type=Path, help="default: every nbs/experiments/E*.ipynb")
    ap.add_argument("--out-dir", type=Path, default=None, help="where the copies run (default: a new /tmp folder)")
    args = ap.parse_args(argv)
    nbs = [p.resolve() for p in args.notebooks] or sorted((ROOT / "nbs" / "experiments").glob("E*.ipynb"))
    missing = [str(p) for p in nbs if not p.is_file()]
    if missing:
        raise SystemExit(f"dry_run_full: no notebook {missing[0]}")
    out_dir = (args.out_dir or Path(tempfile.mkdtemp(prefix="dry-run-full-"))).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"toy FULL runs in {out_dir}", flush=True)
    failed = []
    for src in nbs:
        r = dry_run(src, out_dir)
        print(f"{src.stem}: {r['seconds']:.0f} s, {r['asserts']} assertions would fail, {len(r['errors'])} errors")
        for e in r["errors"]:
            print(f"    {e}")
        if r["errors"]:
            failed.append(src.stem)
        sys.stdout.flush()
    if failed:
        print(f"FAIL: cells raised in {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
