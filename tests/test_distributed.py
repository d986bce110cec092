"""Data-parallel curvature, solvers and projected training on torch.distributed (gloo, 2 and 3 CPU processes).

Each test starts real processes with `subspace_opt.distributed.run_processes` (spawn, a gloo group over TCP on a free
local port) and compares what every rank returns with a single-process computation on the concatenated data."""

import copy, json, os, subprocess, sys
import pandas as pd
import pytest
import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from subspace_opt.curvature import FunctionalHessianOperator, GGNOperator, HessianOperator, loss_sum, prepare_targets
from subspace_opt.distributed import free_port, local_loss_scale, rank, run_processes, shard
from subspace_opt.lanczos import lanczos
from subspace_opt.models import mlp
from subspace_opt.optim import bulk_sgd
from subspace_opt.sources import RandomSubspace
from subspace_opt.subspace import DominantSubspace
from subspace_opt.train import TIMING

OP_RTOL = (
    1e-10  # float64 products: the ranks' partial sums are added in another order than one process adds its batches
)
EIG_TOL = 1e-8  # eigenpairs from products that agree to ~1e-14, solved to residual 1e-11
TRAIN_TOL = 1e-6  # 20 steps of Bulk-SGD: round-off in the gradients and bases compounds through the trajectory
SIZES = {2: [45, 18], 3: [30, 21, 12]}  # unequal shards of the 63 samples


def _task(n=63, seed=0):
    g = torch.Generator().manual_seed(seed)
    X, y = torch.randn(n, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)
    return X, y, mlp((8, 12, 3), seed=seed, dtype=torch.float64)


def _my_shard(X, y, sizes):
    a = sum(sizes[: rank()])
    return X[a : a + sizes[rank()]], y[a : a + sizes[rank()]]


def _products(sizes, loss):
    "On every rank: H, G, H_F and H − G products, the gradient, Lanczos and DominantSubspace on this rank's shard."
    X, y, model = _task()
    data, V = (
        _my_shard(X, y, sizes),
        torch.randn(
            sum(q.numel() for q in model.parameters()),
            5,
            generator=torch.Generator().manual_seed(1),
            dtype=torch.float64,
        ),
    )
    H, G = HessianOperator(model, loss, data, batch_size=7), GGNOperator(model, loss, data, batch_size=7)
    F = FunctionalHessianOperator(model, loss, data)
    out = dict(H=H @ V, n=H.n, n_local=H.n_local)
    out.update(reductions=H.n_reductions, G=G @ V, F=F @ V, HmG=(H - G) @ V, grad=H.gradient())
    res = lanczos(H, k=4, tol=1e-11, seed=3)
    out.update(eigenvalues=res.eigenvalues, eigenvectors=res.eigenvectors)
    sub = DominantSubspace(H, k=3, tol=1e-11, cold_tol=1e-11, seed=3)
    sub.refresh()
    out["sub_cold"] = (sub.eigenvalues.clone(), sub.basis.clone())
    with torch.no_grad():
        model[0].weight.mul_(1.01)  # move the parameters: the next refresh is warm
    sub.refresh()
    out["sub_warm"] = (sub.eigenvalues.clone(), sub.basis.clone(), sub.info["cold"])
    return out


def _reference(loss):
    X, y, model = _task()
    V = torch.randn(
        sum(q.numel() for q in model.parameters()), 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )
    H, G = HessianOperator(model, loss, (X, y)), GGNOperator(model, loss, (X, y))
    out = dict(H=H @ V, G=G @ V, F=FunctionalHessianOperator(model, loss, (X, y)) @ V, grad=H.gradient())
    res = lanczos(H, k=4, tol=1e-11, seed=3)
    out.update(eigenvalues=res.eigenvalues, eigenvectors=res.eigenvectors)
    sub = DominantSubspace(H, k=3, tol=1e-11, cold_tol=1e-11, seed=3)
    sub.refresh()
    out["sub_cold"] = (sub.eigenvalues.clone(), sub.basis.clone())
    with torch.no_grad():
        model[0].weight.mul_(1.01)
    sub.refresh()
    out["sub_warm"] = (sub.eigenvalues.clone(), sub.basis.clone(), sub.info["cold"])
    return out


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


def _same_space(U, W):
    return (U @ U.T - W @ W.T).norm().item()  # sign-free comparison of two orthonormal bases


def _groups(sizes):
    "An explicit subgroup of ranks 0 and 1, and a local operator (`process_group=False`), on this rank's shard."
    import torch.distributed as dist

    X, y, model = _task()
    sub, data = dist.new_group([0, 1]), _my_shard(X, y, sizes)  # new_group: called on every rank
    V = torch.eye(sum(q.numel() for q in model.parameters()), 2, dtype=torch.float64)
    pair = HessianOperator(model, "mse", data, process_group=sub) @ V if rank() < 2 else None
    return pair, HessianOperator(model, "mse", data, process_group=False) @ V


def _both_losses(sizes):
    out = {loss: _products(sizes, loss) for loss in ("mse", "ce")}
    if len(sizes) == 3:
        out["groups"] = _groups(sizes)
    return out


@pytest.mark.parametrize("world", [2, 3], ids=["2procs", "3procs"])
def test_products_and_solvers_match_single_process(world):
    results = run_processes(_both_losses, world, (SIZES[world],))
    for loss in ("mse", "ce"):
        _check_products([res[loss] for res in results], _reference(loss), world)
    if world == 3:  # an explicit process group sums over its ranks only; process_group=False stays on this rank
        X, y, model = _task()
        V, (a, b, c) = torch.eye(sum(q.numel() for q in model.parameters()), 2, dtype=torch.float64), SIZES[3]
        ref = lambda lo, hi: HessianOperator(model, "mse", (X[lo:hi], y[lo:hi])) @ V
        for r in (0, 1):
            assert _rel(results[r]["groups"][0], ref(0, a + b)) <= OP_RTOL
        assert results[2]["groups"][0] is None
        for r, (lo, hi) in enumerate([(0, a), (a, a + b), (a + b, a + b + c)]):
            assert _rel(results[r]["groups"][1], ref(lo, hi)) <= OP_RTOL


def _check_products(ranks, ref, world):
    for r, out in enumerate(ranks):
        assert (out["n"], out["n_local"]) == (63, SIZES[world][r])
        for key, refkey in (("H", "H"), ("G", "G"), ("F", "F"), ("HmG", "F"), ("grad", "grad")):
            assert _rel(out[key], ref[refkey]) <= OP_RTOL, (r, key, _rel(out[key], ref[refkey]))
        assert out["reductions"] == 1  # one all-reduce for a block of 5 over 7-sample batches
        assert _rel(out["eigenvalues"], ref["eigenvalues"]) <= EIG_TOL
        assert _same_space(out["eigenvectors"][:, :1], ref["eigenvectors"][:, :1]) <= EIG_TOL
        assert _same_space(out["eigenvectors"], ref["eigenvectors"]) <= EIG_TOL
        for key in ("sub_cold", "sub_warm"):
            assert _rel(out[key][0], ref[key][0]) <= EIG_TOL and _same_space(out[key][1], ref[key][1]) <= EIG_TOL
        assert not out["sub_warm"][2]  # the second refresh was warm on every rank
    for out in ranks[1:]:  # identical on every rank, bit for bit
        for key in ("H", "G", "F", "grad", "eigenvalues", "eigenvectors"):
            assert torch.equal(out[key], ranks[0][key]), key
        assert all(torch.equal(a, b) for a, b in zip(out["sub_warm"][:2], ranks[0]["sub_warm"][:2]))


def _setups():
    "The error cases and an operator with an empty shard on rank 1, all in one group of processes."
    cases = ("params", "dtype", "empty", "loss", "weights", "tracker", "empty batch", "seed", "source", "optimizer")
    return {case: _bad_setup(case) for case in cases}, _empty_rank()


def _empty_rank():
    X, y, model = _task()
    data = (X, y) if rank() == 0 else (X[:0], y[:0])
    H = HessianOperator(model, "ce", data)
    return H @ torch.eye(H.shape[0], 3, dtype=torch.float64), H.n_local


@pytest.fixture(scope="module")
def setups():
    return run_processes(_setups, 2)


def test_a_rank_without_samples_contributes_nothing(setups):
    X, y, model = _task()
    ref = HessianOperator(model, "ce", (X, y)) @ torch.eye(
        sum(q.numel() for q in model.parameters()), 3, dtype=torch.float64
    )
    assert [res[1][1] for res in setups] == [63, 0]
    for _, (HV, _) in setups:
        assert _rel(HV, ref) <= OP_RTOL


def _bad_setup(case):
    X, y, model = _task()
    if case == "params" and rank() == 1:
        model = mlp((8, 13, 3), dtype=torch.float64)
    if case == "dtype" and rank() == 1:
        model = model.float()
        X = X.float()
    if case == "empty":
        X, y = X[:0], y[:0]
    if case == "weights" and rank() == 1:
        model = mlp((8, 12, 3), seed=1, dtype=torch.float64)  # the same shapes, other values
    loss = "ce" if case == "loss" and rank() == 1 else "mse"
    try:
        H = HessianOperator(model, loss, shard((X, y)))
        if case == "tracker":  # settings that differ between ranks would desynchronise its collectives
            DominantSubspace(H, k=3, cold_tol=1e-2 if rank() == 0 else 1e-8)
        if case == "empty batch":  # a mini-batch with no sample on any rank: n = 0 made the gradient NaN
            H.with_data((X[:0], y[:0]))
        if case == "seed":  # start vectors that differ between ranks: their all-reduced products mix
            lanczos(H, k=3, seed=rank())
        if case == "source":  # random bases that differ between ranks: the replicas would drift apart
            RandomSubspace(H, k=3, seed=rank())
        if case == "optimizer":  # one rank projecting from step 0, the other from step 1: collectives paired apart
            bulk_sgd(torch.optim.SGD(model.parameters(), lr=0.1), DominantSubspace(H, k=3), start_step=rank())
    except ValueError as e:
        return str(e)
    return "no error"


@pytest.mark.parametrize(
    "case, message",
    [
        ("params", "ranks disagree on the parameter count p (rank 0: 147, rank 1: 159)"),
        ("dtype", "ranks disagree on the dtype (rank 0: torch.float64, rank 1: torch.float32)"),
        ("empty", "`data` holds no samples on any of the 2 ranks"),
        ("loss", "ranks disagree on the operator and loss (rank 0: ('HessianOperator', 'mse'), rank 1: ('HessianOp"),
        ("weights", "ranks disagree on the parameter values (sum and sum of squares)"),
        ("tracker", "ranks disagree on the tracker's `cold_tol` (rank 0: 0.01, rank 1: 1e-08)"),
        ("empty batch", "`data` holds no samples on any rank"),
        ("seed", "ranks disagree on the solver's `seed` (rank 0: 0, rank 1: 1)"),
        ("source", "ranks disagree on the source's `seed` (rank 0: 0, rank 1: 1)"),
        ("optimizer", "ranks disagree on the optimizer's `start_step` (rank 0: 0, rank 1: 1)"),
    ],
)
def test_bad_setups_fail_on_every_rank_with_a_clear_error(setups, case, message):
    for errors, _ in setups:
        assert message in errors[case], errors[case]


_HEAP = []  # what a failing rank holds: its exit takes long enough for the others to fail before it reports


def _fails_on_rank_1():
    "Rank 1 raises; rank 0, waiting in a collective for it, fails in turn (gloo's 'connection closed')."
    if rank() == 1:
        _HEAP.extend([i] for i in range(3_000_000))  # about as many objects as a model, data and an optimizer
        raise ValueError("rank 1: the cause")
    total = torch.ones(3)
    torch.distributed.all_reduce(total)
    return total.tolist()


def _exits_on_rank_1():
    if rank() == 1:
        sys.exit(0)
    return 0


def test_the_rank_that_failed_first_is_the_one_named():
    with pytest.raises(RuntimeError, match=r"^rank 1 of 2 failed first:\n(.|\n)*ValueError: rank 1: the cause\n$"):
        run_processes(_fails_on_rank_1, 2)
    with pytest.raises(RuntimeError, match=r"^rank 1 of 2 failed first:\n(.|\n)*SystemExit: 0\n$"):
        run_processes(_exits_on_rank_1, 2)


def _unpicklable_result():
    return lambda: rank()  # a result that cannot travel back to the parent


def test_a_failure_outside_the_function_is_named_too():
    "A result that does not pickle, and a set-up that fails, come back with their cause (not 'without a result')."
    with pytest.raises(RuntimeError, match=r"^rank \d of 2 failed first:\n(.|\n)*Can.t pickle local object"):
        run_processes(_unpicklable_result, 2)
    with pytest.raises(RuntimeError, match=r"^rank \d of 2 failed first:\n(.|\n)*[Tt]hreads"):
        run_processes(rank, 2, threads=0)


def test_process_group_without_distributed_is_refused():
    X, y, model = _task()
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        HessianOperator(model, "mse", (X, y), process_group=object())


STEPS, BATCH = 20, 25


def _batches(n=63):
    g = torch.Generator().manual_seed(7)
    return [torch.randperm(n, generator=g)[:BATCH] for _ in range(STEPS)]


def _bulk_sgd(distributed, resume_at=None):
    """Bulk-SGD for STEPS steps on the global batches.

    Under DDP when `distributed`, resuming from a state_dict at `resume_at`."""
    X, y, model = _task()

    def build(model):
        net = DDP(model) if distributed else model
        sub = DominantSubspace(HessianOperator(model, "mse", shard((X, y))), k=3, tol=1e-10, cold_tol=1e-11)
        return net, bulk_sgd(torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.5), sub)

    net, opt = build(model)
    for step, idx in enumerate(_batches()):
        if step == resume_at:  # a fresh model and optimizer, differently initialised, restored from the states
            states = copy.deepcopy((model.state_dict(), opt.state_dict()))
            model = mlp((8, 12, 3), seed=99, dtype=torch.float64)
            model.load_state_dict(states[0])
            net, opt = build(model)
            opt.load_state_dict(states[1])
        local = shard(idx) if distributed else idx
        out = net(X[local])
        scale = local_loss_scale(BATCH) if distributed else 1 / BATCH
        opt.zero_grad()
        (scale * loss_sum(out, prepare_targets(y[local], "mse", 3, out.dtype), "mse")).backward()
        opt.step()
    return torch.cat([q.detach().reshape(-1) for q in model.parameters()])


def _straight_and_resumed():
    return _bulk_sgd(True), _bulk_sgd(True, resume_at=10)


@pytest.mark.parametrize("world", [2, 3], ids=["2procs", "3procs"])
def test_ddp_bulk_sgd_matches_single_process_and_resumes(world):
    "20 steps under DDP equal 20 single-process steps; so does a run restored from state_dicts after 10 steps."
    ref, ranks = _bulk_sgd(False), run_processes(_straight_and_resumed, world)
    for straight, resumed in ranks:
        assert _rel(straight, ref) <= TRAIN_TOL, _rel(straight, ref)
        assert _rel(resumed, ref) <= TRAIN_TOL, _rel(resumed, ref)
    for straight, resumed in ranks[1:]:
        assert torch.equal(straight, ranks[0][0]) and torch.equal(resumed, ranks[0][1])


CLI_CONFIG = {
    "name": "ddp",
    "data": "digits",
    "data_args": {"n_train": 300},
    "hidden": [16],
    "batch_size": 45,
    "steps": 25,
    "log_every": 5,
    "checkpoint_every": 10,
    "subspace": {"k": 3, "tol": 1e-4},
    "device": "cpu",
    "methods": [{"name": "sgd", "lr": 0.2}, {"name": "bulk-sgd", "dom": 0.0, "bulk": 1.0, "lr": 0.2}],
}
CLI_RTOL, CLI_ATOL = (
    1e-4,
    1e-5,
)  # float32 model: the two runs differ by round-off (sums in another order); atol for near-zero columns
SENSITIVE, SENSITIVE_ATOL = (
    ["leakage", "chi_update", "eff_lr_dom"],
    1e-3,
)  # a Bulk-SGD step's tiny Dominant part, seen through a basis solved to tol 1e-4: leakage (about 0.01-0.02 here)
# is compared to 1e-3; chi_update (about 1e-6) and eff_lr_dom (about 1e-8) are round-off, checked for their size


def _cli(tmp, out, nproc):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = (
        []
        if nproc == 1
        else [
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
        ]
    )
    p = subprocess.run(
        [sys.executable, *launch, "-m", "subspace_opt.cli", "run", str(tmp / "cfg.json"), "--out", str(tmp / out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    return pd.read_csv(tmp / out / "results.csv")


def _same_results(a, b):
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    num = a.select_dtypes("number").columns
    assert (a.drop(columns=num) == b.drop(columns=num)).all().all()
    tight = [c for c in num if c not in SENSITIVE and c not in TIMING]  # wall time differs between any two runs
    pd.testing.assert_frame_equal(a[tight], b[tight], check_exact=False, rtol=CLI_RTOL, atol=CLI_ATOL)
    pd.testing.assert_frame_equal(a[["leakage"]], b[["leakage"]], check_exact=False, rtol=0, atol=SENSITIVE_ATOL)
    for t in (a, b):  # the Dominant part of a Bulk-SGD step is round-off in either run: its size is what is checked
        bulk = t[t.method == "bulk-sgd"].dropna(subset=["chi_update"])
        assert len(bulk) and (bulk.chi_update < 1e-4).all() and (bulk.eff_lr_dom.abs() < 1e-5).all(), bulk


def test_torchrun_cli_run_matches_single_process_and_resumes(tmp_path):
    (tmp_path / "cfg.json").write_text(json.dumps(CLI_CONFIG))
    one, two = _cli(tmp_path, "one", 1), _cli(tmp_path, "two", 2)
    _same_results(two, one)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world_size"] == 2
    # interrupt-and-resume: drop the end of a run (rows after its step-20 checkpoint, done.json), rerun under torchrun
    run = tmp_path / "two" / "runs" / "bulk-sgd-seed0"
    (run / "done.json").unlink()
    rows = pd.read_csv(run / "rows.csv")
    rows[rows.step <= 20].to_csv(run / "rows.csv", index=False)
    _same_results(_cli(tmp_path, "two", 2), one)


def test_torchrun_cli_run_with_the_auto_rank_matches_single_process(tmp_path):
    "k: auto under torchrun: every rank settles on the rank one process chooses, and the rows agree."
    cfg = {
        **CLI_CONFIG,
        "steps": 10,
        "subspace": {"k": "auto", "max_k": 6, "tol": 1e-4},
        "methods": CLI_CONFIG["methods"][1:],
    }
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    one, two = _cli(tmp_path, "one", 1), _cli(tmp_path, "two", 2)
    _same_results(two, one)
    assert one.tracked_k.isna().tolist() == [True, False, False] and one.tracked_k.iloc[1:].between(1, 6).all()
