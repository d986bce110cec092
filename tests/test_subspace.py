"""The Dominant-subspace tracker on exactly repeated eigenvalues, the cost of its warm refreshes and its 'auto' policy.

Every reference is dense float64: `torch.linalg.eigh` of the same matrix, and principal cosines against its top-k
eigenvectors wherever the k boundary has a gap.
"""

import copy
import math

import pytest
import torch
from subspace_opt.curvature import GGNOperator, HessianOperator
from subspace_opt.dense_reference import dense_ggn, dense_hessian
from subspace_opt.lanczos import lanczos, principal_cosines
from subspace_opt.optim import bulk_sgd, dom_sgd
from subspace_opt.subspace import DominantSubspace

F64 = torch.float64


def _top(A, k):
    "Eigenvalues of the symmetric A (descending), its top-k eigenvectors, and the relative gap at the k boundary."
    ev, V = torch.linalg.eigh(A)
    ev = ev.flip(0)
    return ev, V[:, -k:], ((ev[k - 1] - ev[k]) / ev[0].abs()).item()


def _linear_regression(C, seed=0, d=12, n=40):
    "A linear model with C outputs under MSE: its Hessian I_C ⊗ XᵀX/n has every eigenvalue C times."
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=F64) * torch.linspace(3, 0.3, d, dtype=F64)
    y = torch.randint(0, C, (n,), generator=g)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = torch.nn.Linear(d, C, bias=False).double()
    return model, (X, y), torch.kron(torch.eye(C, dtype=F64), X.T @ X / n)


def _symmetric(top, seed=0, n_bulk=30, bulk=(0.0, 4.0), extra=()):
    "A random symmetric matrix with the eigenvalues `top`, a bulk spread over `bulk`, and `extra` ones."
    g = torch.Generator().manual_seed(seed)
    ev = torch.tensor([*top, *extra], dtype=F64)
    ev = torch.cat([ev, torch.linspace(*bulk, n_bulk, dtype=F64)])
    Q = torch.linalg.qr(torch.randn(len(ev), len(ev), generator=g, dtype=F64))[0]
    A = Q @ torch.diag(ev) @ Q.T
    return (A + A.T) / 2


def test_single_vector_lanczos_misses_a_repeated_top_eigenvalue():
    "Why the tracker works with a block: one start vector cannot span a threefold eigenspace (residuals look fine)."
    model, data, dense = _linear_regression(3)
    ev, U, _ = _top(dense, 3)
    with pytest.warns(UserWarning, match="probably a repeated eigenvalue"):  # and it says so
        res = lanczos(HessianOperator(model, "mse", data), k=3, tol=1e-10)
    assert res.residuals.max() < 1e-6
    assert res.eigenvalues[2] < ev[2] - 1  # the third copy of the top eigenvalue is missing
    assert principal_cosines(res.eigenvectors, U).min() < 0.5


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("C", [2, 3, 4])
def test_linear_regression_with_C_outputs_gives_the_whole_top_eigenspace(C, seed):
    "k = C on I_C ⊗ XᵀX/n: cold, then warm (one block product of k + oversample), both the exact top eigenspace."
    model, data, dense = _linear_regression(C, seed)
    ev, U, gap = _top(dense, C)
    assert gap > 1e-2
    sub = DominantSubspace(HessianOperator(model, "mse", data), k=C, seed=seed)
    sub.refresh()
    assert principal_cosines(sub.basis, U).min() >= 0.9999
    torch.testing.assert_close(sub.eigenvalues, ev[:C], rtol=1e-9, atol=0)
    assert sub.info["cold"] and sub.info["converged"]
    sub.refresh()
    assert not sub.info["cold"] and sub.info["n_matvecs"] == C + sub.oversample
    assert principal_cosines(sub.basis, U).min() >= 0.9999


SPECTRA = {
    "10x3 then 9x3, k=3": ([10.0] * 3 + [9.0] * 3, 3, ()),
    "10x5 then 9x5, k=5": ([10.0] * 5 + [9.0] * 5, 5, ()),
    "clusters 10x2, 8x3 inside the top 5": ([10.0] * 2 + [8.0] * 3 + [5.0] * 3, 5, ()),
    "12, then 10x3 inside the top 4, then 9x4": ([12.0] + [10.0] * 3 + [9.0] * 4, 4, ()),
    "10x3 with -20x3 below the bulk (indefinite)": ([10.0] * 3 + [9.0] * 3, 3, (-20.0,) * 3),
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(SPECTRA))
def test_symmetric_matrices_with_clusters_at_and_inside_the_top_k(name, seed):
    "Clusters as large as k, and clusters inside the top k: the tracked span is eigh's top-k span."
    top, k, extra = SPECTRA[name]
    A = _symmetric(top, seed, extra=extra)
    ev, U, gap = _top(A, k)
    assert gap > 1e-2
    sub = DominantSubspace(A, k=k, seed=seed)
    sub.refresh()
    assert principal_cosines(sub.basis, U).min() >= 0.9999, sub.info
    torch.testing.assert_close(sub.eigenvalues, ev[:k], rtol=1e-9, atol=0)


@pytest.mark.parametrize("C", [2, 3])
def test_ggn_of_an_mse_mlp_with_k_twice_the_outputs(C):
    "An MLP whose last layer is zero: its GGN is I_C ⊗ E[φφᵀ] on the last layer, every eigenvalue C-fold; k = 2C."
    torch.manual_seed(C)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, C)).double()
    with torch.no_grad():
        model[2].weight.zero_()
    data = (torch.randn(40, 5, dtype=F64), torch.randint(0, C, (40,)))
    ev, U, gap = _top(dense_ggn(model, "mse", data), 2 * C)
    assert gap > 1e-2 and (ev[: 2 * C : C] - ev[C - 1 : 2 * C : C]).abs().max() < 1e-12  # two C-fold eigenvalues
    sub = DominantSubspace(GGNOperator(model, "mse", data), k=2 * C)
    sub.refresh()
    assert principal_cosines(sub.basis, U).min() >= 0.9999
    torch.testing.assert_close(sub.eigenvalues, ev[: 2 * C], rtol=1e-9, atol=0)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_bulk_and_dom_steps_are_confined_on_the_degenerate_regression(momentum):
    "Threefold top eigenvalue, k = 3: Bulk-SGD steps have no part in the exact top space, Dom-SGD steps none outside."
    for preset in (bulk_sgd, dom_sgd):
        model, (X, y), dense = _linear_regression(3)
        U = _top(dense, 3)[1]
        sub = DominantSubspace(HessianOperator(model, "mse", (X, y)), k=3)
        opt = preset(torch.optim.SGD(model.parameters(), lr=0.05, momentum=momentum), sub)
        for s in range(15):
            before = opt._flat_params()
            opt.zero_grad()
            out = model(X[s % 4 :: 4])
            (0.5 * ((out - torch.nn.functional.one_hot(y[s % 4 :: 4], 3).to(F64)) ** 2).sum(1).mean()).backward()
            opt.step()
            delta = opt._flat_params() - before
            inside = ((U.T @ delta).norm() / delta.norm()).item()
            assert (inside <= 1e-6) if preset is bulk_sgd else (1 - inside <= 1e-6), (preset.__name__, s, inside)


def _rotating(A0, angle, seed=0):
    "A0 turned by exp(t S) for a fixed random skew S: call with t to get A(t), a slowly moving spectrum-fixed matrix."
    g = torch.Generator().manual_seed(seed)
    S = torch.randn(*A0.shape, generator=g, dtype=F64)
    S = angle * (S - S.T) / torch.linalg.matrix_norm(S - S.T, 2)
    return lambda t: torch.matrix_exp(t * S) @ A0 @ torch.matrix_exp(t * S).T


def test_a_subspace_that_moved_little_costs_one_block_product():
    "A refresh after a small rotation (sine <= 1e-3) is one block product of k + oversample and a Rayleigh–Ritz step."
    A_of = _rotating(_symmetric([10.0] * 3 + [9.0] * 3), 1e-3)
    A = A_of(0).clone()
    sub = DominantSubspace(A, k=3)
    sub.refresh()
    for t in range(1, 11):
        A.copy_(A_of(t))
        sub.refresh()
        assert not sub.info["cold"] and sub.info["n_matvecs"] == 3 + sub.oversample, (t, sub.info)
        assert principal_cosines(sub.basis, _top(A, 3)[1]).min() >= 0.9999, t


def test_a_subspace_that_moved_far_takes_more_block_products_until_the_bound_holds():
    "A large rotation between refreshes: the residual says so, the refresh grows its Krylov space, and ends accurate."
    A_of = _rotating(_symmetric([10.0] * 3 + [9.0] * 3), 0.3)
    A = A_of(0).clone()
    sub = DominantSubspace(A, k=3, tol=1e-3, max_warm_restarts=6)
    sub.refresh()
    A.copy_(A_of(1))
    sub.refresh()
    assert not sub.info["cold"] and sub.info["n_matvecs"] > 3 + sub.oversample and sub.info["bound"] <= 1e-3
    assert principal_cosines(sub.basis, _top(A, 3)[1]).min() >= 0.9999


def _refresh_steps(sub, steps, change=None):
    "Call `update()` `steps` times (after `change(step)`, if given); the steps at which it refreshed."
    out = []
    for s in range(steps):
        if change is not None:
            change(s)
        if sub.update():
            out.append(s)
    return out


def test_auto_period_grows_to_max_every_on_a_still_subspace():
    "Constant operator: the drift is 0, the period doubles from min_every and stays at max_every."
    A = _symmetric([10.0] * 3 + [9.0] * 3)
    sub = DominantSubspace(A, k=3, refresh_every="auto", min_every=3, max_every=20)
    when = _refresh_steps(sub, 1)
    cold = sub.n_matvecs
    when += [s + 1 for s in _refresh_steps(sub, 119)]
    assert when[:5] == [0, 3, 9, 21, 41] and all(b - a == 20 for a, b in zip(when[3:], when[4:]))
    assert sub.n_matvecs == cold + (len(when) - 1) * (3 + sub.oversample)  # every warm refresh: one block product


def test_auto_period_shrinks_to_min_every_on_a_subspace_that_moves_fast():
    "A new random operator every step: each refresh measures a large drift, and the period stays at min_every."
    A = _symmetric([10.0] * 3 + [9.0] * 3)
    sub = DominantSubspace(A, k=3, refresh_every="auto", min_every=2, max_every=40)
    when = _refresh_steps(sub, 60, lambda s: A.copy_(_symmetric([10.0] * 3 + [9.0] * 3, seed=s + 1)))
    gaps = [b - a for a, b in zip(when, when[1:])]
    assert gaps and set(gaps) == {2}, gaps


@pytest.mark.parametrize("seed", range(5))
def test_auto_period_stays_within_its_bounds(seed):
    "A subspace that moves at a random pace: every period lies in [min_every, max_every], and the drift decides it."
    A_of = _rotating(_symmetric([10.0] * 3 + [9.0] * 3, seed), 1.0, seed)
    A, g = A_of(0).clone(), torch.Generator().manual_seed(seed)
    pace = torch.rand(200, generator=g, dtype=F64).pow(4) * 0.05  # mostly slow, sometimes fast
    sub = DominantSubspace(A, k=3, refresh_every="auto", min_every=3, max_every=25, drift_tol=0.05)
    periods = []

    def change(s):
        A.copy_(A_of(pace[: s + 1].sum().item()))
        periods.append(sub.period)

    when = _refresh_steps(sub, 200, change)
    gaps = [b - a for a, b in zip(when, when[1:])]
    assert all(3 <= p <= 25 for p in periods) and all(3 <= d <= 25 for d in gaps)
    assert len(set(gaps)) > 1  # it adapted


def test_auto_policy_settings_are_checked():
    A = _symmetric([10.0] * 3 + [9.0] * 3)
    for kw, msg in [
        (dict(refresh_every="sometimes"), "`refresh_every` must be an int >= 1 or 'auto'"),
        (dict(refresh_every=True), "`refresh_every` must be an int >= 1 or 'auto'"),
        (dict(refresh_every="auto", min_every=0), "`min_every` must be an int >= 1"),
        (dict(refresh_every="auto", min_every=5, max_every=4), "`max_every` must be an int >= min_every=5, got 4"),
        (dict(refresh_every="auto", drift_tol=1.5), "`drift_tol` must be a number in (0, 1]"),
        (dict(oversample=0), "`oversample` must be an int >= 1"),
    ]:
        with pytest.raises(ValueError) as e:
            DominantSubspace(A, k=3, **kw)
        assert msg in str(e.value) and "\n" not in str(e.value)


def test_products_are_counted_across_a_fallback_to_a_cold_solve():
    "A warm refresh whose block lost the subspace ends cold; the tracker counts the products of both solves."
    A = _symmetric([10.0] * 3 + [9.0] * 3)
    sub = DominantSubspace(A, k=3, max_warm_restarts=0)
    sub.refresh()
    total = sub.n_matvecs
    sub.block = torch.linalg.qr(torch.randn(A.shape[0], 5, generator=torch.Generator().manual_seed(0), dtype=F64))[0]
    sub.refresh()
    assert sub.info["cold"] and sub.n_matvecs - total == sub.info["n_matvecs"] > 5 + 5
    assert principal_cosines(sub.basis, _top(A, 3)[1]).min() >= 0.9999
    assert math.isfinite(sub.info["bound"])


@pytest.mark.parametrize("loss, steps", [("mse", 0), ("mse", 50), ("ce", 0), ("ce", 50)])
def test_auto_rank_stops_early_at_the_rank_a_converged_solve_chooses(loss, steps, monkeypatch):
    "k='auto' on digits MLP Hessians: the early stop picks the k of the max_k-boundary solve and of the dense Hessian."
    from sklearn.datasets import load_digits
    import subspace_opt.subspace as tracker
    from subspace_opt.losses import loss_sum, prepare_targets
    from subspace_opt.models import mlp
    from subspace_opt.subspace import choose_k

    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X[:300] / 16, dtype=torch.float32), torch.tensor(y[:300])
    model = mlp((64, 32, 10), seed=1)
    opt, targets = torch.optim.SGD(model.parameters(), lr=0.3), prepare_targets(y, loss, 10, torch.float32)
    for _ in range(steps):  # full-batch gradient descent on the mean loss
        opt.zero_grad()
        (loss_sum(model(X), targets, loss) / len(X)).backward()
        opt.step()
    H = HessianOperator(model, loss, (X, y))
    early = DominantSubspace(H, k="auto")
    early.refresh()
    monkeypatch.setattr(tracker, "_rank_decider", lambda sub: None)  # the solve that converges the max_k boundary
    full = DominantSubspace(H, k="auto")
    full.refresh()
    dense = dense_hessian(copy.deepcopy(model).double(), loss, (X.double(), y))  # the same weights, in float64
    exact = choose_k(torch.linalg.eigvalsh(dense).flip(0)[: full.max_k + 1])  # the tracker reads max_k + 1 of them
    assert early.k == full.k == exact
    assert early.info["converged"] and early.info["n_matvecs"] < full.info["n_matvecs"]
    assert principal_cosines(early.basis, full.basis).min() > 0.999


def test_a_refresh_inside_autocast_solves_as_outside():
    "A float32 tracker refreshed inside `torch.autocast` (bfloat16) converges as outside it, to the same eigenvalues."
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    op = HessianOperator(model, "ce", (torch.randn(30, 6), torch.randint(0, 3, (30,))))
    plain, inside = DominantSubspace(op, k=3), DominantSubspace(op, k=3)
    plain.refresh()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside.refresh()
    assert inside.info["converged"] and inside.info["n_matvecs"] == plain.info["n_matvecs"]
    torch.testing.assert_close(inside.eigenvalues, plain.eigenvalues, rtol=1e-5, atol=0)
