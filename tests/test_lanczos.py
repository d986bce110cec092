"""The eigensolvers against torch.linalg.eigh of dense float64 Hessians, and against each other, on every device."""

import pytest
import torch
from cases import CASES, DEVICE_PARAMS
from subspace_opt.curvature import GGNOperator, HessianOperator
from subspace_opt.dense_reference import EIG_RTOL, MIN_COSINE, dense_ggn, dense_hessian
from subspace_opt.lanczos import block_lanczos, lanczos, principal_cosines, scipy_eigsh

SOLVERS = {
    "lanczos": lambda op, k, U0: lanczos(op, k=k, tol=1e-10),
    "block": lambda op, k, U0: block_lanczos(op, k=k, tol=1e-10, n_blocks=3),
    "block-warm": lambda op, k, U0: block_lanczos(op, k=k, U0=U0, tol=1e-10),
    "eigsh": lambda op, k, U0: scipy_eigsh(op, k=k, tol=1e-10),
}


def _well_posed_k(evals, candidates=range(2, 6)):
    "The k among `candidates` with the widest relative gap λ_k − λ_{k+1}, so the top-k space is well defined."
    lam = evals.flip(0)
    return max(candidates, key=lambda k: (lam[k - 1] - lam[k]) / lam[0].abs())


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("solver", list(SOLVERS))
@pytest.mark.parametrize("case", CASES[:7], ids=[c.id for c in CASES[:7]])
def test_solver_matches_eigh(case, solver, device):
    model, data = case.build("cpu")
    evals, evecs = torch.linalg.eigh(dense_hessian(model, case.loss, data))
    k = _well_posed_k(evals)
    model, data = case.build(device)
    op = HessianOperator(model, case.loss, data)
    U0 = (
        evecs[:, -k - 2 :]
        + 1e-3 * torch.randn(evecs.shape[0], k + 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ).to(device)
    res = SOLVERS[solver](op, k, U0)
    assert res.converged and res.eigenvalues.shape == (k,) and res.eigenvectors.shape == (op.shape[0], k)
    assert (res.eigenvalues.cpu() - evals.flip(0)[:k]).abs().max() <= EIG_RTOL * evals.abs().max()
    assert principal_cosines(res.eigenvectors, evecs[:, -k:].to(device)).min() >= MIN_COSINE
    assert (res.residuals <= 1e-9).all()
    gram = res.eigenvectors.T @ res.eigenvectors
    assert (gram - torch.eye(k, dtype=gram.dtype, device=device)).abs().max() <= 1e-10


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_ggn_smallest_and_magnitude(device):
    "'SA' and 'LM' on the (positive semi-definite) GGN and the (indefinite) Hessian."
    case = CASES[1]
    model, data = case.build(device)
    cpu_model, cpu_data = case.build("cpu")
    G = dense_ggn(cpu_model, case.loss, cpu_data)
    evals = torch.linalg.eigvalsh(G)
    res = lanczos(GGNOperator(model, case.loss, data), k=2, which="SA", tol=1e-10, max_iter=G.shape[0])
    assert (res.eigenvalues.cpu() - evals[:2].flip(0)).abs().max() <= EIG_RTOL * evals.abs().max()
    eh = torch.linalg.eigvalsh(dense_hessian(cpu_model, case.loss, cpu_data))
    top_mag = eh[eh.abs().argsort(descending=True)[:3]].sort(descending=True).values
    res = lanczos(HessianOperator(model, case.loss, data), k=3, which="LM", tol=1e-10)
    assert (res.eigenvalues.cpu() - top_mag).abs().max() <= EIG_RTOL * eh.abs().max()


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_float32_model_solvers_agree(device):
    "On a float32 model the Lanczos and eigsh eigenvalues agree to float32 accuracy."
    model, data = CASES[5].build(device, torch.float32)
    op = HessianOperator(model, "ce", data)
    a, b = lanczos(op, k=3, tol=1e-5), scipy_eigsh(op, k=3, tol=1e-5)
    assert a.eigenvectors.dtype == torch.float32 and a.eigenvalues.dtype == torch.float64
    assert ((a.eigenvalues - b.eigenvalues).abs() / a.eigenvalues.abs()).max() <= 1e-4


def test_lanczos_is_reproducible_and_warm_startable():
    model, data = CASES[0].build()
    op = HessianOperator(model, "mse", data)
    a, b = lanczos(op, k=3, seed=5), lanczos(op, k=3, seed=5)
    assert torch.equal(a.eigenvalues, b.eigenvalues) and a.n_matvecs == b.n_matvecs
    warm = lanczos(op, k=1, v0=a.eigenvectors[:, 0], tol=1e-8)
    assert warm.n_matvecs < a.n_matvecs and abs(warm.eigenvalues[0] - a.eigenvalues[0]) <= 1e-8 * abs(a.eigenvalues[0])


def test_solver_argument_errors():
    A = torch.diag(torch.arange(1.0, 8.0))
    with pytest.raises(ValueError, match=r"`k` must be an int in \[1, p=7\), got 7"):
        lanczos(A, k=7)
    with pytest.raises(ValueError, match="`tol` must be > 0"):
        block_lanczos(A, k=2, tol=-1)
    with pytest.raises(ValueError, match="`which` must be one of"):
        scipy_eigsh(A, k=2, which="BE")
    with pytest.raises(ValueError, match=r"`U0` must have shape \(p=7, b\)"):
        block_lanczos(A, k=2, U0=torch.randn(6, 3))
    with pytest.raises(ValueError, match="n_blocks\\*b <= p"):
        block_lanczos(A, k=2, U0=torch.randn(7, 4))
