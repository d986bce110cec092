"""Execute notebooks top to bottom — every cell, `cuda`- and `slow`-flagged ones included — and save them with outputs.

    python tools/execute_notebooks.py nbs/benchmarks/B01_lanczos_vs_eigsh.ipynb            # in place
    python tools/execute_notebooks.py nbs/benchmarks/*.ipynb --out-dir /tmp/executed        # elsewhere

Used to produce the executed notebooks the docs show (on a CUDA GPU when one is available). Run `nbdev_clean`
afterwards to strip metadata. Stops at the first failing cell and exits non-zero.
"""
import argparse
import sys
import time
from pathlib import Path

from execnb.nbio import write_nb
from execnb.shell import CaptureShell


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('notebooks', nargs='+', type=Path)
    ap.add_argument('--out-dir', type=Path, default=None, help='write executed copies here instead of in place')
    args = ap.parse_args(argv)
    for src in args.notebooks:
        dest = src if args.out_dir is None else args.out_dir / src.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        shell = CaptureShell()
        try:
            shell.execute(src, dest, exc_stop=True)
        except Exception:
            print(shell.prettytb(fname=src), file=sys.stderr)
            return 1
        print(f"{src} -> {dest} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
