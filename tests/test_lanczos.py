"""The eigensolvers against torch.linalg.eigh of dense float64 Hessians, and against each other, on every device."""

import math

import numpy as np
import pytest
import torch
from cases import CASES, DEVICE_PARAMS
from scipy.sparse.linalg import aslinearoperator
from subspace_opt.curvature import GGNOperator, HessianOperator
from subspace_opt.dense_reference import EIG_RTOL, MIN_COSINE, dense_ggn, dense_hessian
from subspace_opt.lanczos import block_lanczos, check_symmetric, lanczos, principal_cosines, scipy_eigsh

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
    with pytest.warns(UserWarning, match="rounding floor of float64 products"):  # its smallest eigenvalues are ~0
        res = lanczos(GGNOperator(model, case.loss, data), k=2, which="SA", tol=1e-10, max_iter=G.shape[0])
    assert not res.converged  # the estimates met 1e-10; the true residuals (about 1e-8) do not
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


# Refusals: arguments out of range, operators the solvers cannot answer for, products that are not finite.
ALL = {"lanczos": lanczos, "block": block_lanczos, "eigsh": scipy_eigsh}


def _sym(p=12, seed=0, dtype=torch.float64):
    "A random symmetric (p, p) matrix."
    A = torch.randn(p, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (A + A.T).to(dtype)


def _one_line(excinfo):
    assert "\n" not in str(excinfo.value), str(excinfo.value)


@pytest.mark.parametrize("solver", list(ALL))
@pytest.mark.parametrize("tol", [math.inf, 0.0, -1.0, math.nan, -math.inf, 0, None, "1e-6"])
def test_tol_must_be_finite_and_positive(solver, tol):
    "tol=inf used to stop at once and call the first guess converged; tol=nan never compared; both are refused."
    with pytest.raises(ValueError, match=r"^`tol` must be > 0 and finite, got ") as e:
        ALL[solver](_sym(), k=2, tol=tol)
    _one_line(e)


@pytest.mark.parametrize("solver", list(ALL))
@pytest.mark.parametrize("k", [0, -1, 12, 13, 2.0, True, "2", None])
def test_k_out_of_range(solver, k):
    with pytest.raises(ValueError, match=r"^`k` must be an int in \[1, p=12\), got ") as e:
        ALL[solver](_sym(), k=k)
    _one_line(e)


@pytest.mark.parametrize("solver", ["lanczos", "eigsh"])
def test_largest_k_is_p_minus_one(solver):
    "At the edge of the range, k = p - 1, the answer is still right."
    A = _sym()
    res = ALL[solver](A, k=11, tol=1e-10)
    assert res.converged
    assert (res.eigenvalues - torch.linalg.eigvalsh(A).flip(0)[:11]).abs().max() <= 1e-9 * A.abs().max()


@pytest.mark.parametrize(
    "solver, kwargs, message",
    [
        ("lanczos", dict(max_restarts=-1), "`max_restarts` must be an int >= 0, got -1"),
        ("lanczos", dict(max_restarts=2.5), "`max_restarts` must be an int >= 0, got 2.5"),
        ("lanczos", dict(max_iter=0), r"`max_iter` must be an int in \(2, p=12\] \(more than k\), got 0"),
        ("lanczos", dict(check_every=0), "`check_every` must be an int >= 1, got 0"),
        ("lanczos", dict(v0=torch.tensor([math.inf] + [1.0] * 11)), "`v0` must be a non-zero vector .* finite entries"),
        ("block", dict(max_restarts=-1), "`max_restarts` must be an int >= 0, got -1"),
        ("block", dict(n_blocks=0), "`n_blocks` must be an int >= 1, got 0"),
        ("block", dict(block_size=1), "`block_size` must be an int >= 2, got 1"),
        ("block", dict(block_size=0), "`block_size` must be an int >= 2, got 0"),
        ("block", dict(U0=torch.full((12, 3), math.nan)), "`U0` must be finite"),
        ("eigsh", dict(ncv=2), r"`ncv` must be None or an int in \(2, p=12\], got 2"),
        ("eigsh", dict(ncv=13), r"`ncv` must be None or an int in \(2, p=12\], got 13"),
    ],
)
def test_solver_specific_arguments(solver, kwargs, message):
    with pytest.raises(ValueError, match=message) as e:
        ALL[solver](_sym(), k=2, **kwargs)
    _one_line(e)


@pytest.mark.parametrize("solver", list(ALL))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_refuses_non_symmetric_matrix(solver, dtype):
    "Without the check each solver returned numbers that are not the matrix's eigenvalues, marked converged."
    A = _sym(dtype=dtype)
    A = A + 0.5 * torch.triu(A, 1)
    with pytest.raises(ValueError, match=r"^`op` must be symmetric: \|uᵀAv − vᵀAu\| = .* on a random pair") as e:
        ALL[solver](A, k=2)
    _one_line(e)


class _Own:
    "An operator of one's own: products through `@`, and no `SELF_ADJOINT` declaration."

    def __init__(self, op, good=10**9):
        self.op, self.good, self.shape, self.dtype, self.device = op, good, op.shape, op.dtype, op.device

    def __matmul__(self, v):
        self.good -= 1
        out = self.op @ v
        return out if self.good >= 0 else torch.full_like(out, math.nan)


@pytest.mark.parametrize("solver", list(ALL))
def test_refuses_non_symmetric_operator_of_ones_own(solver):
    A = _sym()
    with pytest.raises(ValueError, match=r"`op` must be symmetric: .*\(_Own\(shape=\(12, 12\), dtype=torch.float64"):
        ALL[solver](_Own(A + torch.triu(A, 1)), k=2)
    assert ALL[solver](_Own(A), k=2, tol=1e-10).converged  # symmetric: probed and accepted


@pytest.mark.parametrize("cls", [HessianOperator, GGNOperator])
def test_float32_curvature_products_pass_the_symmetry_probe(cls):
    "Round-off leaves float32 products of a symmetric operator ~1e-7 asymmetric; the probe accepts up to 3.5e-4."
    model, data = CASES[5].build("cpu", torch.float32)
    op = cls(model, "ce", data)
    assert check_symmetric(op) == 0.0  # declared self-adjoint: not probed
    assert max(check_symmetric(_Own(op), seed=s) for s in range(5)) <= 1e-5
    a, b = lanczos(_Own(op), k=3, tol=1e-5), lanczos(op, k=3, tol=1e-5)
    assert a.converged and torch.equal(a.eigenvalues, b.eigenvalues)


@pytest.mark.parametrize("solver", list(ALL))
def test_nan_parameters_stop_the_solver_naming_the_operator(solver):
    "Parameters that went NaN used to surface as a `linalg.eigh` failure inside the solver."
    model, data = CASES[0].build()
    op = HessianOperator(model, "mse", data)
    with torch.no_grad():
        model[0].weight[1, 1] = math.nan
    with pytest.raises(FloatingPointError, match=r"^HessianOperator\(shape=\(73, 73\).*\) @ v is not finite") as e:
        ALL[solver](op, k=2)
    assert "NaN or inf in 0.weight" in str(e.value)
    _one_line(e)


@pytest.mark.parametrize("solver", list(ALL))
def test_products_that_turn_nan_stop_the_solver_naming_the_operator(solver):
    with pytest.raises(FloatingPointError, match=r"a product with _Own\(shape=\(12, 12\), dtype=torch.float64") as e:
        ALL[solver](_Own(_sym(), good=4), k=2, tol=1e-14)  # 2 probe products, then 2 good ones
    _one_line(e)


@pytest.mark.parametrize("solver", list(ALL))
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_refuses_tensor_with_nonfinite_entries(solver, bad):
    A = _sym()
    A[3, 5] = A[5, 3] = bad
    with pytest.raises(ValueError, match="^`op` must be finite: the tensor holds NaN or inf entries"):
        ALL[solver](A, k=2)


@pytest.mark.parametrize("solver", list(ALL))
@pytest.mark.parametrize("op", [np.eye(12), aslinearoperator(np.eye(12))], ids=["ndarray", "scipy"])
def test_refuses_what_it_cannot_multiply(solver, op):
    with pytest.raises(TypeError, match=r"^`op` must be a torch.Tensor or an operator with `shape`, `dtype`"):
        ALL[solver](op, k=2)


def test_eigsh_converged_only_when_its_residuals_meet_tol():
    "ARPACK's test is absolute for eigenvalues near 0: it stopped with relative residuals ~1e-5 and said converged."
    d = torch.cat([torch.linspace(1, 2, 40), torch.tensor([1e-10, 2e-10, 3e-10])]).double()
    with pytest.warns(UserWarning, match=r"ARPACK stopped, but the largest relative residual .* > tol=1e-10"):
        res = scipy_eigsh(torch.diag(d), k=3, which="SA", tol=1e-10)
    assert not res.converged and (res.residuals > 1e-10).any()
    assert (res.eigenvalues.flip(0) - d[-3:]).abs().max() > 1e-10 * d[-3:].abs().max()  # and the values are off
    good = scipy_eigsh(torch.diag(d), k=3, which="LA", tol=1e-10)
    assert good.converged and (good.residuals <= 1e-10).all()


@pytest.mark.parametrize("solver", list(ALL))
def test_seed_sets_the_start(solver):
    "The same seed repeats a solve bit for bit; another starts from another vector (or block): other rounding, signs."
    A = _sym(40)
    a, b, c = (ALL[solver](A, k=3, seed=seed) for seed in (0, 0, 1))
    assert a.converged and c.converged
    assert torch.equal(a.eigenvectors, b.eigenvectors) and not torch.equal(a.eigenvectors, c.eigenvectors)
    assert (a.eigenvalues - c.eigenvalues).abs().max() <= 1e-9 * a.eigenvalues.abs().max()
