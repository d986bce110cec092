"""Time the steps the experiments' FULL settings are made of, on this machine, within about 90 s; write a table.

    python tools/gpu_pilot.py [--out DIR] [--workers 4] [--small]

Meant as the first command on a CUDA GPU, before the FULL settings run (tools/run_gpu_experiments.sh): their
notebooks estimate their cost from these units. On the FULL network (Fashion-MNIST, first 5,000 images, MLP
784-200-200-10 tanh, MSE, batch 50, k = 10) and on the CNN (conv 32, its subspace from a fixed 1,000-image subsample)
it times, with the device synchronised:

- an SGD step, a Bulk-SGD step with its subspace refreshed every step (T = 1, warm; and with `solver: power`, one
  block product a refresh) and one refreshed every 10;
- the first (cold) solve, a logged row (train and test evaluation, the logging tracker's refresh, its λ_{k+1});
- the same with `k: auto` (E5): a first solve that picks the rank among the top 21 pairs, rows that log 21 of them;
- one Hessian-vector product and a block of 10 in one pass;
- the Bulk-SGD step at T = 1 again while `--workers` processes run it at once, as the sweeps do: the slowdown says
  how much running several runs on one device gains;
- on the FULL MLP, a warm refresh and its pieces (a block product, orthonormalising a block, Rayleigh-Ritz, the angle
  bound, the drift between two bases) and the projection of a gradient: where a refresh's time goes besides products
  (parts.csv). Each timed refresh follows an untimed SGD step, so that it starts from parameters that moved, as a
  refresh in training at T = 1 does (a refresh of an unchanged Hessian converges at once and costs less);
- `--members` runs (12) of the FULL MLP one after another against the same runs stacked into one batched call
  (`torch.func.vmap` over their parameters): an SGD step each, and a block of 12 Hessian-vector products each on the
  whole data set, with the stacked products' relative difference from the separate ones (stacked.csv) — what runs
  that share one model and data set would gain from being trained as one.

`--small` swaps in digits and a small MLP, for a check on a CPU (tests/test_tools.py runs it). The base step, the
logged row, the products and the refresh's parts are medians over repeats after a warm-up call; the projected step is
the mean over whole refresh periods (its refreshes amortised); the cold solve is one call, after an untimed solve on
the first setting has paid the device's start-up (CUDA context, kernels). The processes of the shared measurement
wait for each other at a barrier before their projected steps, so their timed windows start together.
The tables (pilot.csv, parts.csv, pilot.json) go to `--out`, default the current folder.
"""

import argparse
import copy
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from subspace_opt.config import config_from_dict, make_model
from subspace_opt.curvature import HessianOperator, _hessian_rows, loss_sum, prepare_targets
from subspace_opt.data import default_device, environment
from subspace_opt.krylov import _orth_against, _rayleigh_ritz, angle_bound
from subspace_opt.metrics import measure
from subspace_opt.subspace import _drift
from subspace_opt.train import _batch_loss, _now, build_run, task_data  # the runner's own loss and clock

FULL = dict(data="fashion-mnist", data_args={"n_train": 5000}, hidden=[200, 200])
SMALL = dict(data="digits", data_args={"n_train": 100}, hidden=[64, 64])
SUBSAMPLE = {False: 1000, True: 50}  # the CNN's tracked Hessian: its first n images (FULL, --small)


def config(size: dict, device: str, model: str = "mlp", **subspace):
    "An experiment with one Bulk-SGD method on the chosen network, as the FULL settings build it."
    d = dict(name="pilot", model=model, activation="tanh", loss="mse", batch_size=50, steps=10, seeds=[0], **size)
    d |= dict(methods=[dict(name="bulk-sgd", dom=0.0, bulk=1.0, lr=0.05)], device=device)
    return config_from_dict(d | dict(subspace=dict(k=10) | subspace))


def timed(fn, model, repeats: int):
    "Median seconds of `fn()` over `repeats` calls, after one call to warm up (the clock waits for `model`'s device)."
    fn()
    times = []
    for _ in range(repeats):
        t0 = _now(model)
        fn()
        times.append(_now(model) - t0)
    return statistics.median(times)


def steps(cfg, repeats: int, ready=None):
    "Seconds of a base step and of a projected step (with the refreshes it owes), and products per projected step."
    # ready: called just before the projected steps are timed (the shared measurement's barrier)
    data = task_data(cfg)
    model, opt, log_sub = build_run(cfg, cfg.methods[0], 0, data)
    X, y = data.train
    T = prepare_targets(y, cfg.loss, data.n_classes, X.dtype)  # as the runner does: once, then indexed
    gen = torch.Generator().manual_seed(0)

    def one(project: bool):
        idx = torch.randint(0, len(X), (cfg.batch_size,), generator=gen).to(X.device)
        opt.zero_grad()
        _batch_loss(model(X[idx]), T[idx], cfg.loss, len(idx)).backward()
        (opt.step if project else opt.base.step)()

    dev = X.device
    t0 = _now(model)
    opt.subspace.update()  # the cold solve
    cold, cold_products = _now(model) - t0, opt.subspace.n_matvecs
    base = timed(lambda: one(False), model, repeats)
    one(True)  # the warm-up: the timed steps start right after a refresh
    if ready is not None:
        ready()
    n, before = 20 * -(-repeats // 20), opt.subspace.n_matvecs  # whole periods of T = 1, 10 and 20
    t0 = _now(model)
    for _ in range(n):
        one(True)
    projected = (_now(model) - t0) / n  # the mean over whole periods: refreshes amortised
    per_step = (opt.subspace.n_matvecs - before) / n
    row = timed(lambda: measure(cfg, model, opt, log_sub, data, 1), model, max(2, repeats // 4))
    op = opt.subspace.op
    v = torch.randn(op.shape[0], 10, device=dev, dtype=op.dtype)
    single = timed(lambda: op @ v[:, 0], model, repeats)
    block = timed(lambda: op @ v, model, repeats)
    return dict(
        base_step=base,
        projected_step=projected,
        products_per_step=per_step,
        cold_solve=cold,
        cold_products=cold_products,
        logged_row=row,
        one_product=single,
        block_of_10=block,
    )


def parts(cfg, repeats: int):
    "Milliseconds of a warm refresh, of the pieces it is made of and of a gradient's projection (T = 1 setting)."
    data = task_data(cfg)
    model, opt, _ = build_run(cfg, cfg.methods[0], 0, data)
    sub, (X, y) = opt.subspace, data.train
    T = prepare_targets(y, cfg.loss, data.n_classes, X.dtype)
    gen = torch.Generator().manual_seed(0)

    def sgd_step():  # untimed: the parameters move before each refresh, as in training
        idx = torch.randint(0, len(X), (cfg.batch_size,), generator=gen).to(X.device)
        opt.zero_grad()
        _batch_loss(model(X[idx]), T[idx], cfg.loss, len(idx)).backward()
        opt.base.step()

    def warm_refresh():  # seconds and products of a refresh after a step, as every step at T = 1 pays
        sgd_step()
        t0 = _now(model)
        sub.refresh()
        return _now(model) - t0, sub.info["n_matvecs"]

    sub.update()  # the cold solve: a basis, and the block the warm refreshes start from
    op, b = sub.op, sub.block.shape[1]
    Q = _orth_against(None, torch.randn(op.shape[0], 2 * b, device=op.device, dtype=op.dtype))
    HQ = op @ Q  # two blocks, as after a refresh's second block product
    theta, V, HV = _rayleigh_ritz(Q, HQ)
    W = Q[:, :b] + HQ[:, :b]  # a block to orthonormalise
    other = _orth_against(None, sub.basis + 0.01 * torch.randn_like(sub.basis))  # a basis that moved a little
    grads = [torch.randn_like(q) for q in op.parameters()]
    warm_refresh()  # the warm-up
    refreshes = [warm_refresh() for _ in range(repeats)]
    refresh = statistics.median(t for t, _ in refreshes)
    blocks = sum(n for _, n in refreshes) / repeats / b
    ms = {
        f"warm refresh ({blocks:.1f} block products)": refresh,
        f"block product ({b} vectors)": timed(lambda: op @ Q[:, :b], model, repeats),
        f"orthonormalise a block of {b}": timed(lambda: _orth_against(None, W), model, repeats),
        f"Rayleigh-Ritz on {2 * b} vectors": timed(lambda: _rayleigh_ritz(Q, HQ), model, repeats),
        "angle bound": timed(lambda: angle_bound(theta[:b], V[:, :b], HV[:, :b], sub.k), model, repeats),
        "drift between two bases": timed(lambda: _drift(sub.basis, other), model, repeats),
        "projection of a gradient": timed(lambda: sub.project_bulk(grads), model, repeats),
    }
    return pd.DataFrame(dict(part=list(ms), ms=[1e3 * t for t in ms.values()]))


def stacked(cfg, repeats: int, members: int):
    "Milliseconds of `members` runs' SGD steps and Hessian blocks one run after another, and stacked into one call."
    data = task_data(cfg)
    (X, y), b, loss = data.train, cfg.batch_size, cfg.loss
    models = [make_model(cfg, data, seed) for seed in range(members)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in models]
    params = {n: p.detach().clone() for n, p in torch.func.stack_module_state(models)[0].items()}
    shell = copy.deepcopy(models[0]).to("meta")  # the structure only: parameters come from `params`
    idx = torch.randint(0, len(X), (members, b), generator=torch.Generator().manual_seed(0)).to(X.device)
    T = prepare_targets(y, loss, data.n_classes, X.dtype)  # as the runner does: once, then indexed

    def separate_steps():
        for m, o, i in zip(models, opts, idx):
            o.zero_grad()
            _batch_loss(m(X[i]), T[i], loss, b).backward()
            o.step()

    one = lambda ps, xb, tb: loss_sum(torch.func.functional_call(shell, ps, (xb,)), tb, loss) / b
    grads = torch.func.vmap(torch.func.grad(one))

    def stacked_step():
        for n, g in grads(params, X[idx], T[idx]).items():
            params[n].sub_(0.05 * g)

    ops = [HessianOperator(m, loss, data.train) for m in models]
    V = torch.randn(members, ops[0].shape[0], 12, generator=torch.Generator().manual_seed(1)).to(X.device, X.dtype)
    rows = torch.func.vmap(_hessian_rows, in_dims=(None, 0, None, None, None, None, 0, None))
    stacked_blocks = lambda: rows(shell, params, {}, X, T, loss, V.transpose(1, 2), ops[0]._layout) / len(X)
    separate_blocks = lambda: torch.stack([(o @ v).T for o, v in zip(ops, V)])
    want, got = separate_blocks(), stacked_blocks()  # the same products, stacked: a check of the batched path
    diff = ((got - want).norm() / want.norm()).item()
    out = []
    for what, sep, stk, check in [
        ("SGD step", separate_steps, stacked_step, float("nan")),
        ("Hessian block of 12", separate_blocks, stacked_blocks, diff),
    ]:
        t_sep, t_stk = timed(sep, models[0], repeats), timed(stk, models[0], repeats)
        out.append(dict(what=what, members=members, separate_ms=1e3 * t_sep, stacked_ms=1e3 * t_stk, rel_diff=check))
    return pd.DataFrame(out).assign(speedup=lambda t: t.separate_ms / t.stacked_ms)


_BARRIER = None  # in a worker of the shared measurement: the barrier all of them wait at


def _init(barrier):
    "Set up a worker of the shared measurement: keep the barrier."
    global _BARRIER
    _BARRIER = barrier


def _worker(args):
    "One of several processes timing the projected step at once (spawned: CUDA does not survive a fork)."
    size, device, repeats, threads = args
    torch.set_num_threads(threads)
    return steps(config(size, device), repeats, ready=lambda: _BARRIER.wait(timeout=600))["projected_step"]


def shared(size: dict, device: str, repeats: int, workers: int):
    "Median projected-step seconds over `workers` processes that time their projected steps from the same moment."
    threads = max(1, torch.get_num_threads() // workers) if device == "cpu" else 1
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(workers)  # each process takes one job: a job waits here until every process holds one
    with ctx.Pool(workers, initializer=_init, initargs=(barrier,)) as pool:
        return statistics.median(pool.map(_worker, [(size, device, repeats, threads)] * workers, chunksize=1))


def in_ms(rows: list):
    "The table of `rows` (dicts of seconds and counts), its times in milliseconds, columns named `..._ms`."
    table = pd.DataFrame(rows)
    ms = [c for c in table.columns if c not in ("setting", "products_per_step", "cold_products")]
    table[ms] = 1e3 * table[ms]
    return table.rename(columns={c: f"{c}_ms" for c in ms})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=".", help="folder for pilot.csv and pilot.json")
    ap.add_argument("--workers", type=int, default=4, help="processes that share the device in the last measurement")
    ap.add_argument("--small", action="store_true", help="digits and a small MLP: a quick check on a CPU")
    ap.add_argument("--repeats", type=int, default=20, help="timed repeats of each step")
    ap.add_argument("--members", type=int, default=12, help="runs stacked into one batched call (stacked.csv)")
    a = ap.parse_args(argv)
    if a.workers < 1 or a.repeats < 1 or a.members < 2:
        sys.exit("gpu_pilot: --workers and --repeats must be >= 1, --members >= 2")
    device, size, t_start = str(default_device()), SMALL if a.small else FULL, time.perf_counter()
    rows, out = [], Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    warm = config(size, device, refresh_every=1)
    build_run(warm, warm.methods[0], 0, task_data(warm))[1].subspace.update()  # untimed: the device's start-up costs
    cnn = {**size, "hidden": [4] if a.small else [32]}  # the CNN's channels
    for name, cfg in [
        ("mlp, T=1", lambda: config(size, device, refresh_every=1)),
        ("mlp, T=1, power", lambda: config(size, device, refresh_every=1, solver="power")),
        ("mlp, T=10", lambda: config(size, device, refresh_every=10)),
        ("mlp, T=1, k auto", lambda: config(size, device, refresh_every=1, k="auto")),
        (
            "cnn, T=1, subsample",
            lambda: config(cnn, device, "cnn", hessian_data="subsample", n_hessian=SUBSAMPLE[a.small]),
        ),
    ]:
        rows.append(dict(setting=name, **steps(cfg(), a.repeats)))
        print(f"{name}: {time.perf_counter() - t_start:.0f} s so far", flush=True)
        in_ms(rows).to_csv(out / "pilot.csv", index=False)  # after each setting: a run stopped later keeps these
    pieces = parts(config(size, device, refresh_every=1), a.repeats)
    pieces.to_csv(out / "parts.csv", index=False)
    print(f"refresh parts: {time.perf_counter() - t_start:.0f} s so far", flush=True)
    stack = stacked(config(size, device), max(3, a.repeats // 4), a.members)
    stack.to_csv(out / "stacked.csv", index=False)
    print(f"stacked runs: {time.perf_counter() - t_start:.0f} s so far", flush=True)
    alone = rows[0]["projected_step"]
    together = shared(size, device, max(4, a.repeats // 2), a.workers)
    table = in_ms(rows)
    report = dict(
        environment=environment(torch.device(device)),
        workers=a.workers,
        projected_step_alone_ms=1e3 * alone,
        projected_step_shared_ms=1e3 * together,
        throughput_gain=a.workers * alone / together,  # steps per second of `workers` runs at once over one
        seconds=time.perf_counter() - t_start,
        table=table.to_dict(orient="records"),
        parts=pieces.to_dict(orient="records"),
        stacked=stack.to_dict(orient="records"),
    )
    (out / "pilot.json").write_text(json.dumps(report, indent=1))
    print(table.round(3).to_string(index=False))
    print(pieces.round(3).to_string(index=False))
    print(stack.round(4).to_string(index=False))
    print(
        f"{a.workers} runs at once: {1e3 * together:.2f} ms per projected step each, alone {1e3 * alone:.2f} ms; "
        f"throughput x{report['throughput_gain']:.2f}; pilot took {report['seconds']:.0f} s on {device}"
    )


if __name__ == "__main__":
    main()
