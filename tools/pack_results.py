"""Pack what a run of experiment notebooks produced into one .tar.gz, for machines that give back only a few files.

    python tools/pack_results.py --repo . --logs LOGDIR --out results.tar.gz \\
        --notebooks nbs/experiments/E01_dom_vs_bulk.ipynb ... --runs-beside nbs/experiments/*.ipynb

`tools/run_gpu_experiments.sh --pack FILE` calls it at its end. The archive holds:

- the executed notebooks given to `--notebooks` (those that finished);
- the log folder's files, under `gpu-logs/`;
- every finished run beside the notebooks of `--runs-beside`: each folder under their `runs/` that holds a
  `done.json`, with its files and subfolders (snapshots of weights, which analyses read) except the checkpoint (a
  finished run is reused from its rows and records alone) and the lock; and the `*.json` records beside the runs
  (an analysis's settings, a sweep's grid), so that a rerun on another machine reuses them as this one would.

Paths inside are relative to the repository root (a notebook outside it: relative to its folder's parent), so
`tar xzf FILE` at the root puts the notebooks in place, and a rerun of the same notebooks reuses the finished runs.
Links are never followed or packed. The archive depends only on the files' names, contents and modes: members in
name order, their times, owners and the gzip header's time fixed, so that packing the same files twice gives the same
bytes. Prints what the archive holds and its size.
"""

import argparse
import gzip
import os
import sys
import tarfile
from pathlib import Path

SKIP = {"checkpoint.pt", ".lock"}  # a finished run needs neither to be reused
MTIME = 1796342400  # every member's time, 2026-12-04 00:00 UTC (the gzip header's is 0): the same files, the same bytes


def _name(path: Path, repo: Path):
    "The archive name of `path`: relative to the repository root; None outside it."
    try:
        return path.relative_to(repo).as_posix()
    except ValueError:
        return None


def finished_runs(folder: Path):
    """The files a rerun reuses under `folder/runs`: every finished run's folder (one with a done.json), its subfolders
    such as snapshots/ included, and the records beside the runs (*.json outside any run's folder, such as an
    analysis's settings); checkpoints, locks and unfinished runs (a run.json without a done.json) left out."""
    runs = folder / "runs"
    if not runs.is_dir() or runs.is_symlink():
        return []
    walk = sorted((Path(here), names) for here, _, names in os.walk(runs))  # os.walk does not enter linked folders
    finished = {here for here, names in walk if "done.json" in names}
    unfinished = {here for here, names in walk if "run.json" in names and "done.json" not in names}
    files = []
    for here, names in walk:
        run = next((d for d in (here, *here.parents) if d in finished or d in unfinished), None)
        keep = (lambda n: n not in SKIP) if run in finished else (lambda n: run is None and n.endswith(".json"))
        files += [here / n for n in sorted(names) if keep(n) and not (here / n).is_symlink()]
    return files


def pack(repo: Path, logs: Path, out: Path, notebooks: list, beside: list):
    "Write the archive `out`; return (number of notebooks, number of run files, number of log files)."
    repo = repo.resolve()
    members = []  # (path, name in the archive)

    def add(path: Path, anchor: Path):
        path = path.absolute()
        name = _name(path, repo)
        members.append((path, name if name is not None else path.relative_to(anchor.parent).as_posix()))

    for nb in notebooks:
        add(Path(nb), Path(nb).absolute().parent)
    folders = list(dict.fromkeys(Path(nb).absolute().parent for nb in beside))
    n_runs = 0
    for folder in folders:
        for f in finished_runs(folder):
            add(f, folder)
            n_runs += 1
    log_files = sorted(f for f in logs.iterdir() if f.is_file() and not f.is_symlink()) if logs.is_dir() else []
    members += [(f, f"gpu-logs/{f.name}") for f in log_files]
    names = [n for _, n in members]
    if len(set(names)) != len(names):
        raise SystemExit(f"pack_results: two files would share a name in the archive: {sorted(names)}")
    tmp = out.with_name(out.name + ".part")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w") as tar:
            for path, name in sorted(members, key=lambda m: m[1]):
                info = tar.gettarinfo(path, arcname=name)
                info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "", ""
                if info.isreg():
                    with open(path, "rb") as f:
                        tar.addfile(info, f)
                else:
                    tar.addfile(info)
    tmp.replace(out)
    return len(notebooks), n_runs, len(log_files)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repo", type=Path, required=True, help="the repository root (archive paths are relative to it)")
    ap.add_argument("--logs", type=Path, required=True, help="the folder of logs and summary.tsv")
    ap.add_argument("--out", type=Path, required=True, help="the archive to write (.tar.gz)")
    ap.add_argument("--notebooks", nargs="*", default=[], help="executed notebooks to pack (those that finished)")
    ap.add_argument("--runs-beside", nargs="*", default=[], help="notebooks whose folders' runs/ to search")
    a = ap.parse_args(argv)
    if not a.out.name.endswith(".tar.gz"):
        print(f"pack_results: --out must name a .tar.gz file, got {a.out}", file=sys.stderr)
        return 2
    missing = [nb for nb in a.notebooks if not Path(nb).is_file()]
    if missing:
        print(f"pack_results: no notebook {missing[0]}", file=sys.stderr)
        return 2
    n_nbs, n_runs, n_logs = pack(a.repo, a.logs, a.out, a.notebooks, a.runs_beside)
    size = a.out.stat().st_size / 2**20
    print(f"packed {n_nbs} notebooks, {n_runs} files of finished runs and {n_logs} log files: {a.out} ({size:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
