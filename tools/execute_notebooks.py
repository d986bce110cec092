"""Execute notebooks top to bottom — every cell, `cuda`- and `slow`-flagged ones included — and save them with outputs.

    python tools/execute_notebooks.py nbs/benchmarks/B01_lanczos_vs_eigsh.ipynb            # in place
    python tools/execute_notebooks.py nbs/benchmarks/*.ipynb --out-dir /tmp/executed        # elsewhere

Used to produce the executed notebooks the docs show (on a CUDA GPU when one is available). Without a GPU, cells
flagged `#| cuda` are skipped (say `--skip-flags` to choose). Run `nbdev_clean` afterwards to strip metadata.
Each notebook runs in its own folder, as under `nbdev_test`. Stops at the first failing cell and exits 1, without
saving that notebook. With `--keep-going` a failing cell does not stop the notebook: every cell runs, the notebook is
saved with the errors in its outputs (so a FULL run whose checked outcome fails keeps its tables and figures), and
the exit status is 3 (KEPT_GOING) when some cell failed.
"""

import argparse
import os
import re
import signal
import sys
import time
from pathlib import Path

from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell

KEPT_GOING = 3  # exit status of `--keep-going` when a cell failed: the notebook ran to its end and was saved


def failed_cells(nb) -> list:
    "Indices of the code cells of an executed notebook whose outputs hold an error."
    return [i for i, c in enumerate(nb.cells) if any(o.get("output_type") == "error" for o in c.get("outputs", []))]


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


class _Interrupt:
    """SIGINT (a deadline's `timeout --signal=INT`) interrupts the running cell, as it would anyway, and stops the
    notebook before its next cell, so that even under `--keep-going` an interrupted notebook is never saved: IPython
    records a cell's KeyboardInterrupt as that cell's error and would go on to the next. The notebook is executed in
    memory and written only when no interrupt was seen, so an interrupt in its last cell leaves it unsaved too."""

    def __init__(self):
        self.seen = False
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def check(self):  # before each cell, outside IPython's own handling
        if self.seen:
            raise KeyboardInterrupt("interrupted: the notebook is not saved")

    def save(self, nb, dest: Path):
        "Write the executed `nb` to `dest` unless an interrupt came (an interrupt during the write waits for its end)."
        part = dest.with_name(f".{dest.name}.part")  # a complete notebook or none: never half of one
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            self.check()  # an interrupt in the last cell, which IPython recorded as that cell's error
            write_nb(nb, part)
            part.replace(dest)
        finally:
            part.unlink(missing_ok=True)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--out-dir", type=Path, default=None, help="write executed copies here instead of in place")
    ap.add_argument(
        "--skip-flags", nargs="*", default=None, help="skip cells with these flags (default: cuda without a GPU)"
    )
    ap.add_argument(
        "--keep-going", action="store_true", help="run every cell despite failures; save; exit 3 if a cell failed"
    )
    args = ap.parse_args(argv)
    if args.skip_flags is None:
        import torch

        args.skip_flags = [] if torch.cuda.is_available() else ["cuda"]
    home, status, interrupt = Path.cwd(), 0, _Interrupt()
    for src in args.notebooks:
        src = src.resolve()
        dest = src if args.out_dir is None else (args.out_dir.resolve() / src.name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        shell = CaptureShell()
        os.chdir(src.parent)  # as nbdev_test does: relative paths in a notebook (e.g. runs/) are relative to its folder
        try:
            nb = read_nb(src)  # executed in memory, and written only when no interrupt came, the last cell included
            shell.set_path(src.parent)
            # with --keep-going execnb records each failure in its cell's outputs and goes on
            shell.run_all(
                nb,
                exc_stop=not args.keep_going,
                preproc=lambda c: interrupt.check() or skip_or_clear(c, args.skip_flags),
            )
        except Exception:
            print(shell.prettytb(fname=src), file=sys.stderr)
            return 1
        finally:
            os.chdir(home)
        interrupt.save(nb, dest)
        print(f"{src} -> {dest} ({time.perf_counter() - t0:.1f} s)")
        nb = read_nb(dest)
        for i in failed_cells(nb):  # the error of each failed cell, as a notebook would show it
            print(f"FAILED cell {i} of {src.name}:", file=sys.stderr)
            for out in nb.cells[i].outputs:
                if out.get("output_type") == "error":
                    print("\n".join(out.get("traceback", [])[-6:]), file=sys.stderr)
            status = KEPT_GOING
    return status


if __name__ == "__main__":
    sys.exit(main())
