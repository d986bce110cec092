"""What keeping the top-k Hessian eigenspace costs on this machine's device: one warm refresh against a cold `eigsh`.

    python tools/refresh_bench.py [--out DIR] [--repeats 5] [--data digits fashion-mnist] [--threads N] [--small]

B03 measures this on one CPU thread; this script measures it on whatever device `default_device()` gives (a CUDA GPU
when there is one), on two networks trained by SGD (MSE, batch 50, seed 0, k = 10):

- digits, all 1,438 training images, MLP 64-256-256-10 (tanh), 150 steps at η = 0.2 (B03's MLP);
- Fashion-MNIST, first 5,000 images, MLP 784-200-200-10 (tanh), 150 steps at η = 0.05 (the FULL settings' network).

At that point the tracker is refreshed accurately (cold, `cold_tol` 1e-4), the network takes one more SGD step, and
from that same state it times, with the device synchronised and the median over `--repeats`:

- `eigsh, cold`: scipy's ARPACK to tolerance 1e-6 (its BLAS on one thread; the products on the device) — how Song et
  al. recompute the subspace, and the accurate basis that every row's cosine is taken against;
- `eigsh, cold, tol 1e-4`: the same to 1e-4, which already gives that basis to a principal cosine near 1 in fewer
  products: the cheaper reference a user would choose;
- `block Krylov, cold`: the tracker's own cold solve (`cold_tol` 1e-6), a fresh tracker;
- `refresh, one block`: a warm refresh with one block product and Rayleigh–Ritz (`max_warm_restarts=0`, no fallback);
- `refresh, one block, ahead`: the same, returning the basis one power step on (`ahead=True`: span HV, no product);
- `refresh, default`: a warm refresh with the default settings (block products while the angle bound exceeds 0.1).

Each row has its Hessian-vector products, its seconds, each cold eigsh's seconds over its own (`eigsh_over_this` for
1e-6, `eigsh4_over_this` for 1e-4), and the smallest principal cosine of its basis to the eigsh basis. BLAS is held to
one thread for eigsh only (`threadpoolctl`, BLAS pools only), so torch's products use the same threads on every row:
`--threads N` sets them (`torch.set_num_threads`; by default torch's own choice). The table goes to refresh.csv (and
refresh.json, with the environment) in `--out`. `--small` swaps in small networks (64-32-10 on 300 digits, 784-32-10
on 500 images) for a check on a CPU (tests/test_tools.py runs it).
"""

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from subspace_opt.curvature import HessianOperator
from subspace_opt.data import data_available, default_device, environment, load_task
from subspace_opt.lanczos import principal_cosines, scipy_eigsh
from subspace_opt.models import mlp
from subspace_opt.subspace import DominantSubspace
from subspace_opt.train import _now  # the runner's clock: waits for the device

K, BATCH, TRAIN_STEPS, REF_TOL = 10, 50, 150, 1e-6
NETWORKS = {  # data set -> (loader arguments, hidden widths, learning rate), full and --small
    False: {"digits": ({}, (256, 256), 0.2), "fashion-mnist": ({"n_train": 5000}, (200, 200), 0.05)},
    True: {"digits": ({"n_train": 300}, (32,), 0.2), "fashion-mnist": ({"n_train": 500}, (32,), 0.05)},
}


def trained(name: str, small: bool, device: torch.device):
    "The network of `name` after TRAIN_STEPS + 1 SGD steps, its Hessian, and the tracker's state one step before."
    args, hidden, lr = NETWORKS[small][name]
    X, y = load_task(name, device=device, **args).train
    model = mlp((X.shape[1], *hidden, 10), seed=0, device=device)
    H, gen = HessianOperator(model, "mse", (X, y)), torch.Generator().manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def step():
        idx = torch.randint(0, len(X), (BATCH,), generator=gen).to(device)
        loss = 0.5 * ((model(X[idx]) - torch.nn.functional.one_hot(y[idx], 10)) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(TRAIN_STEPS):
        step()
    sub = DominantSubspace(H, k=K, cold_tol=1e-4)
    sub.refresh()
    state = sub.state_dict()
    step()
    return model, H, state, len(X)


def solves(H, state):
    "The six ways, each a function of no arguments returning (basis, products)."

    def eigsh(tol):
        def solve():
            with threadpool_limits(1, user_api="blas"):  # ARPACK's own BLAS; torch's threads as on the other rows
                r = scipy_eigsh(H, k=K, tol=tol, residuals=False)
            return r.eigenvectors, r.n_matvecs

        return solve

    def tracker(warm: bool, **kw):
        def solve():
            t = DominantSubspace(H, k=K, **kw)
            if warm:
                t.load_state_dict(state)
            t.refresh()
            return t.basis, t.info["n_matvecs"]

        return solve

    return {
        "eigsh, cold": eigsh(REF_TOL),
        "eigsh, cold, tol 1e-4": eigsh(1e-4),
        "block Krylov, cold": tracker(False, cold_tol=REF_TOL),
        "refresh, one block": tracker(True, max_warm_restarts=0, restart_tol=math.inf),
        "refresh, one block, ahead": tracker(True, max_warm_restarts=0, restart_tol=math.inf, ahead=True),
        "refresh, default": tracker(True),
    }


def bench(name: str, small: bool, device: torch.device, repeats: int):
    "Rows of the six ways on the network of `name`."
    model, H, state, n = trained(name, small, device)
    ways = solves(H, state)
    secs, out = {w: [] for w in ways}, {}
    for w, f in ways.items():  # a warm-up each: kernels compiled, caches filled
        out[w] = f()
    for _ in range(repeats):  # interleaved, so a slow spell of a shared machine hits every way alike
        for w, f in ways.items():
            t0 = _now(model)
            f()
            secs[w].append(_now(model) - t0)
    ref, cold = out["eigsh, cold"][0], statistics.median(secs["eigsh, cold"])
    cheap = statistics.median(secs["eigsh, cold, tol 1e-4"])
    rows = []
    for w, s in secs.items():
        cos = principal_cosines(out[w][0], ref).min().item()
        rows.append(dict(data=name, n_train=n, p=H.shape[0], way=w, products=out[w][1], seconds=statistics.median(s)))
        rows[-1] |= dict(eigsh_over_this=cold / statistics.median(s), eigsh4_over_this=cheap / statistics.median(s))
        rows[-1] |= dict(min_cos_vs_eigsh=cos)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".", help="folder for refresh.csv and refresh.json")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of each way")
    ap.add_argument("--data", nargs="+", default=["digits", "fashion-mnist"], choices=["digits", "fashion-mnist"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--small", action="store_true", help="small networks: a quick check on a CPU")
    a = ap.parse_args(argv)
    if a.repeats < 1:
        sys.exit("refresh_bench: --repeats must be >= 1")
    if a.threads is not None and a.threads < 1:
        sys.exit("refresh_bench: --threads must be >= 1")
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    missing = [d for d in a.data if d != "digits" and not data_available(d)]  # digits ships with scikit-learn
    if missing:
        why = "apt-get install dataset-fashion-mnist, or --data digits"
        sys.exit(f"refresh_bench: {missing[0]} is not installed ({why})")
    device, t0, out = default_device(), time.perf_counter(), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in a.data:  # the tables are written after each network: a run stopped later keeps the first
        rows += bench(name, a.small, device, a.repeats)
        print(f"{name}: {time.perf_counter() - t0:.0f} s so far", flush=True)
        table = pd.DataFrame(rows)
        table.to_csv(out / "refresh.csv", index=False)
        report = dict(environment=environment(device), seconds=time.perf_counter() - t0, table=table.to_dict("records"))
        (out / "refresh.json").write_text(json.dumps(report, indent=1))
    print(table.round(4).to_string(index=False))
    print(f"took {report['seconds']:.0f} s on {device}")


if __name__ == "__main__":
    main()
