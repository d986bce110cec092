"""GGN analysis against dense float64 on every shared case and device: energy and trace shares, Rayleigh quotients,
randomized estimators and SLQ on the device."""

import ast
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from cases import CASES, DEVICE_PARAMS
from subspace_opt.curvature import FunctionalHessianOperator, GGNOperator, HessianOperator
from subspace_opt.dense_reference import dense_functional_hessian, dense_ggn, dense_hessian
from subspace_opt.ggn import curvature_energy, curvature_report, hutchpp, rayleigh_quotients, slq_density, trace_shares
from planted import Plant

MATRICES = {
    "H": (HessianOperator, dense_hessian),
    "G": (GGNOperator, dense_ggn),
    "H_F": (FunctionalHessianOperator, dense_functional_hessian),
}
K = 3


def _dense_shares(D, U):
    "Dense definitions: dom, cross (both off-diagonal blocks) and bulk (the complement block) of ‖D‖²_F."
    P = U @ U.T
    B = torch.eye(len(D), dtype=D.dtype) - P
    F = (D**2).sum()
    return [((U.T @ D @ U) ** 2).sum() / F, 2 * ((P @ D @ B) ** 2).sum() / F, ((B @ D @ B) ** 2).sum() / F]


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_shares_match_dense(case, device):
    model, data = case.build("cpu")
    dense = {n: f(model, case.loss, data) for n, (_, f) in MATRICES.items()}
    U = torch.linalg.eigh(dense["H"]).eigenvectors[:, -K:]
    model, data = case.build(device)
    for name, (Op, _) in MATRICES.items():
        op = Op(model, case.loss, data)
        got = curvature_energy(op, U.to(device), method="exact")
        assert torch.allclose(
            torch.tensor([got.dom, got.cross, got.bulk], dtype=torch.float64),
            torch.stack(_dense_shares(dense[name], U)),
            rtol=0,
            atol=1e-8,
        ), (name, got)
        assert abs(got.dom + got.cross + got.bulk - 1) < 1e-12
        t = trace_shares(op, U.to(device), method="exact")
        assert abs(t.total - dense[name].trace().item()) <= 1e-8 * dense[name].abs().max().item()
        assert abs(t.parts[0] - (U.T @ dense[name] @ U).trace().item()) <= 1e-8 * dense[name].abs().max().item()
    rq = rayleigh_quotients(U.to(device), **{n: Op(model, case.loss, data) for n, (Op, _) in MATRICES.items()})
    assert (rq["G"] >= -1e-12).all()
    assert ((rq["H_F"] - (rq["H"] - rq["G"])).abs() <= 1e-10 * rq["H"].abs().max()).all()


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_randomized_bulk_is_unbiased_and_its_stderr_calibrated(device):
    """Hutch++ over 40 seeds: the mean estimate within 4 standard errors of the mean of the exact value (unbiased), the
    reported stderr the size of the estimates' spread, and 3 stderr covering at least 80 % of the seeds. A per-seed
    "within 3 stderr" alone is a coin toss: the stderr comes from 6 residual probes (5 degrees of freedom), so each
    seed falls outside with probability 1.8 %, and which seeds do changes with the device's random stream."""
    case, seeds = CASES[0], range(40)
    model, data = case.build(device)
    for Op, _ in MATRICES.values():
        op = Op(model, case.loss, data)
        U = torch.linalg.eigh(op @ torch.eye(op.shape[0], dtype=torch.float64, device=device)).eigenvectors[:, -K:]
        exact = curvature_energy(op, U, method="exact").total
        ests = [curvature_energy(op, U, method="hutch++", n_probes=12, seed=s) for s in seeds]
        assert all(e.method == "hutch++" and e.stderr > 0 for e in ests)
        totals, stderrs = torch.tensor([e.total for e in ests]), torch.tensor([e.stderr for e in ests])
        spread = totals.std().item()
        assert abs(totals.mean().item() - exact) <= 4 * spread / math.sqrt(len(seeds)) + 1e-10 * exact, Op.__name__
        assert 0.5 <= stderrs.median().item() / spread <= 2, (Op.__name__, stderrs.median().item(), spread)
        assert ((totals - exact).abs() <= 3 * stderrs).float().mean() >= 0.8, Op.__name__


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_estimators_and_slq_on_device(device):
    g = torch.Generator().manual_seed(0)
    eigs = torch.cat(
        [torch.tensor([50.0, 30.0, 20.0], dtype=torch.float64), torch.rand(197, generator=g, dtype=torch.float64)]
    )
    V = torch.linalg.qr(torch.randn(200, 200, generator=g, dtype=torch.float64)).Q
    M = ((V * eigs) @ V.T).to(device)
    est = hutchpp(M, "frobenius", 40, seed=1)
    assert abs(est.value - (eigs**2).sum().item()) <= 3 * est.stderr
    sd = slq_density(M, n_probes=10, n_steps=30)
    assert abs(torch.trapezoid(sd.density, sd.grid).item() - 1) < 1e-6
    per = (sd.weights * sd.nodes).sum(1)
    assert abs(per.mean().item() - eigs.mean().item()) <= 3 * per.std().item() / math.sqrt(10)


def test_report_eigenvalues_match_dense():
    case = CASES[1]  # cross-entropy: G's loss Hessian is diag(p) − ppᵀ
    model, data = case.build("cpu")
    rep = curvature_report(model, case.loss, data, k=K, method="exact", tol=1e-10)
    for col, f in (("lambda_H", dense_hessian), ("lambda_G", dense_ggn)):
        want = torch.linalg.eigvalsh(f(model, case.loss, data))[-K:].flip(0)
        assert torch.allclose(torch.tensor(rep.outliers[col].values), want, rtol=1e-7, atol=1e-9), col
    assert rep.shares.matrix.tolist() == ["H", "G", "H_F"] and (rep.shares.overlap_HG.between(0, 1 + 1e-9)).all()


SMALL_RUN = {
    "name": "traj",
    "data": "digits",
    "data_args": {"n_train": 60},
    "hidden": [4],
    "steps": 4,
    "log_every": 2,
    "checkpoint_every": 2,
    "snapshot_every": 4,
    "batch_size": 20,
    "subspace": {"k": 3},
    "methods": [{"name": "sgd", "lr": 0.1}],
    "device": "cpu",
}

# Imports the analysis modules with the package's __init__ skipped (it imports everything) and the training loop,
# the sweep and the command line made unimportable; runs `analyze_run`; prints its shares as JSON.
WITHOUT_TRAINING = """
import importlib.abc, json, sys, types
from pathlib import Path

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name in ("subspace_opt.train", "subspace_opt.sweep", "subspace_opt.cli"):
            raise ImportError(f"{name} is blocked")

sys.meta_path.insert(0, Block())
pkg = types.ModuleType("subspace_opt")
pkg.__path__ = [sys.argv[1]]
sys.modules["subspace_opt"] = pkg
from subspace_opt.config import config_from_dict
from subspace_opt.ggn import analyze_run
cfg = config_from_dict(json.loads(Path(sys.argv[2]).read_text()))
tc = analyze_run(cfg, sys.argv[3], method="exact", progress=False)
assert not [m for m in sys.modules if m in ("subspace_opt.train", "subspace_opt.sweep", "subspace_opt.cli")]
print(tc.shares.to_json())
"""


def test_trajectory_analysis_needs_no_training_loop(tmp_path):
    "`analyze_run` (from `ggn`, where it is re-exported) works with `subspace_opt.train` unimportable."
    import subspace_opt
    from subspace_opt.config import config_from_dict
    from subspace_opt.train import run_experiment
    from subspace_opt.trajectory import analyze_run

    (tmp_path / "cfg.json").write_text(json.dumps(SMALL_RUN))
    run_experiment(config_from_dict(SMALL_RUN), tmp_path / "run", progress=False)
    pkg_dir = str(Path(subspace_opt.__file__).parent)
    p = subprocess.run(
        [sys.executable, "-c", WITHOUT_TRAINING, pkg_dir, str(tmp_path / "cfg.json"), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert p.returncode == 0, p.stderr[-3000:]
    got = pd.read_json(io.StringIO(p.stdout))
    assert sorted(got.step.unique()) == [0, 4] and got.matrix.tolist() == ["H", "G", "H_F"] * 2
    again = analyze_run(config_from_dict(SMALL_RUN), tmp_path / "run", method="exact", progress=False)  # read back
    pd.testing.assert_frame_equal(again.shares, got, check_dtype=False)


def test_analysis_modules_import_nothing_of_the_runner():
    "The source of `ggn` and `trajectory`: no import of `train`, `sweep` or `cli`."
    import subspace_opt

    for name in ("ggn", "trajectory"):
        tree = ast.parse((Path(subspace_opt.__file__).parent / f"{name}.py").read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)] + [
            a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
        ]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names]
        assert not [m for m in imported if m.split(".")[-1] in ("train", "sweep", "cli")], (name, imported)
    assert len((Path(subspace_opt.__file__).parent / "ggn.py").read_text().splitlines()) <= 400


def test_planted_snapshot_is_refused_and_runs_nothing(tmp_path):
    from subspace_opt.config import UserError, config_from_dict
    from subspace_opt.ggn import analyze_run
    from subspace_opt.train import run_experiment

    cfg = config_from_dict(SMALL_RUN)
    run_experiment(cfg, tmp_path / "run", progress=False)
    snap = sorted((tmp_path / "run" / "runs" / "sgd-seed0" / "snapshots").glob("step*.pt"))[-1]  # the last one
    weights = torch.load(snap, weights_only=True)
    torch.save({**weights, "extra": Plant(tmp_path / "payload-ran")}, snap)
    with pytest.raises(UserError, match=f"{snap.name} is not a weights snapshot: it holds more than tensors"):
        analyze_run(cfg, tmp_path / "run", method="exact", progress=False)
    assert not (tmp_path / "payload-ran").exists()
    torch.load(snap, weights_only=False)  # the payload is real: an unrestricted load runs it
    assert (tmp_path / "payload-ran").exists()
