"""Execute notebooks top to bottom — every cell, `cuda`- and `slow`-flagged ones included — and save them with outputs.

    python tools/execute_notebooks.py nbs/benchmarks/B01_lanczos_vs_eigsh.ipynb            # in place
    python tools/execute_notebooks.py nbs/benchmarks/*.ipynb --out-dir /tmp/executed        # elsewhere

Used to produce the executed notebooks the docs show (on a CUDA GPU when one is available). Without a GPU, cells
flagged `#| cuda` are skipped (say `--skip-flags` to choose). Run `nbdev_clean` afterwards to strip metadata.
Each notebook runs in its own folder, as under `nbdev_test`. Stops at the first failing cell and exits non-zero.
"""

import argparse
import os
import re
import sys
import time
from pathlib import Path

from execnb.shell import CaptureShell


def has_flag(cell, flags):
    "Whether a code cell carries one of the nbdev test flags (`#| cuda`, `#| slow`, ...)."
    return cell.cell_type == "code" and any(
        re.match(rf"^\s*#\s*\|\s*{f}\s*$", line) for line in cell.source.splitlines() for f in flags
    )


def skip_or_clear(cell, flags):
    """execnb's pre-processor: True skips a flagged cell (it keeps the outputs it has); any other code cell loses its
    old outputs first, since execnb only replaces outputs when a cell makes some (a cell now silent would keep stale
    ones)."""
    if has_flag(cell, flags):
        return True
    if cell.cell_type == "code":
        cell.outputs, cell.execution_count = [], None
    return False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--out-dir", type=Path, default=None, help="write executed copies here instead of in place")
    ap.add_argument(
        "--skip-flags", nargs="*", default=None, help="skip cells with these flags (default: cuda without a GPU)"
    )
    args = ap.parse_args(argv)
    if args.skip_flags is None:
        import torch

        args.skip_flags = [] if torch.cuda.is_available() else ["cuda"]
    home = Path.cwd()
    for src in args.notebooks:
        src = src.resolve()
        dest = src if args.out_dir is None else (args.out_dir.resolve() / src.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        shell = CaptureShell()
        os.chdir(src.parent)  # as nbdev_test does: relative paths in a notebook (e.g. runs/) are relative to its folder
        try:
            shell.execute(src, dest, exc_stop=True, preproc=lambda c: skip_or_clear(c, args.skip_flags))
        except Exception:
            print(shell.prettytb(fname=src), file=sys.stderr)
            return 1
        finally:
            os.chdir(home)
        print(f"{src} -> {dest} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
