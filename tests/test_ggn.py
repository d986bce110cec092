"""GGN analysis against dense float64 on every shared case and device: energy and trace shares, Rayleigh quotients,
randomized estimators and SLQ on the device."""

import math
import pytest
import torch
from cases import CASES, DEVICE_PARAMS
from subspace_opt.curvature import FunctionalHessianOperator, GGNOperator, HessianOperator
from subspace_opt.dense_reference import dense_functional_hessian, dense_ggn, dense_hessian
from subspace_opt.ggn import curvature_energy, curvature_report, hutchpp, rayleigh_quotients, slq_density, trace_shares

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
def test_randomized_bulk_within_three_stderr(device):
    case = CASES[0]
    model, data = case.build(device)
    for Op, _ in MATRICES.values():
        op = Op(model, case.loss, data)
        U = torch.linalg.eigh(op @ torch.eye(op.shape[0], dtype=torch.float64, device=device)).eigenvectors[:, -K:]
        exact = curvature_energy(op, U, method="exact")
        for seed in range(5):
            est = curvature_energy(op, U, method="hutch++", n_probes=12, seed=seed)
            assert est.method == "hutch++" and est.stderr > 0
            assert abs(est.total - exact.total) <= 3 * est.stderr + 1e-10 * exact.total


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
