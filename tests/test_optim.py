"""Subspace tracking and projected optimizers across devices, mini-batch Hessian data and checkpoints on disk."""

import copy

import pytest
import torch
from cases import CASES, DEVICE_PARAMS
from subspace_opt.curvature import HessianOperator
from subspace_opt.dense_reference import dense_hessian
from subspace_opt.lanczos import lanczos, principal_cosines
from subspace_opt.optim import ProjectedOptimizer, bulk_sgd, dom_sgd
from subspace_opt.subspace import DominantSubspace


def _mse(model, X, y):
    return 0.5 * ((model(X) - torch.nn.functional.one_hot(y, 3).to(X.dtype)) ** 2).sum(1).mean()


BASES = {
    "momentum-gradient": (lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9), "gradient"),
    "adam-update": (lambda ps: torch.optim.Adam(ps, lr=0.05), "update"),
}


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("preset", [bulk_sgd, dom_sgd])
def test_linear_regression_updates_stay_in_their_part(device, base, preset):
    """Constant Hessian: Bulk updates have no component along the exact top-k space, Dom updates lie inside it.

    (Adam in 'gradient' mode is excluded on purpose: its per-coordinate scaling moves a projected gradient out of
    the Bulk subspace; 'update' mode is the design that confines Adam's steps.)"""
    g = torch.Generator().manual_seed(0)
    X = (torch.randn(30, 5, generator=g, dtype=torch.float64) * torch.linspace(2, 0.4, 5, dtype=torch.float64)).to(
        device
    )
    y = torch.randint(0, 3, (30,), generator=g).to(device)
    model = torch.nn.Linear(5, 3, bias=False).double().to(device)
    U = torch.linalg.eigh(torch.kron(torch.eye(3, dtype=torch.float64), (X.T @ X / 30).cpu()))[1][:, -6:].to(device)
    make, mode = BASES[base]
    opt = preset(make(model.parameters()), DominantSubspace(HessianOperator(model, "mse", (X, y)), k=6), mode=mode)
    for s in range(15):
        before = opt._flat_params()
        opt.zero_grad()
        _mse(model, X[s % 3 :: 3], y[s % 3 :: 3]).backward()
        opt.step()
        delta = opt._flat_params() - before
        inside = ((U.T @ delta).norm() / delta.norm()).item()
        assert (inside <= 1e-6) if preset is bulk_sgd else (1 - inside <= 1e-6)


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_tracking_along_sgd(device):
    "Warm refreshes stay within principal cosine 0.99 of a fresh accurate solve at every step."
    model, data = CASES[0].build(device)
    H = HessianOperator(model, "mse", data)
    sub = DominantSubspace(H, k=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    X, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    for step in range(25):
        sub.update()
        fresh = lanczos(H, k=3, tol=1e-10)
        assert principal_cosines(sub.basis, fresh.eigenvectors).min() >= 0.99, step
        idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(step))[:6].to(device)
        opt.zero_grad()
        _mse(model, X[idx], y[idx]).backward()
        opt.step()
    assert sub.n_refreshes == 25


def test_refresh_on_minibatch_hessian_data():
    "`refresh(op=...)` measures the Hessian of the data it is given (here: one mini-batch) for that refresh only."
    model, data = CASES[0].build()
    sub = DominantSubspace(HessianOperator(model, "mse", data), k=2, cold_every=1)
    sub.refresh(HessianOperator(model, "mse", data[1]))
    top = torch.linalg.eigvalsh(dense_hessian(model, "mse", data[1])).flip(0)[:2]
    assert torch.allclose(sub.eigenvalues.cpu(), top, rtol=1e-6)
    sub.refresh()
    full = torch.linalg.eigvalsh(dense_hessian(model, "mse", data)).flip(0)[:2]
    assert torch.allclose(sub.eigenvalues.cpu(), full, rtol=1e-6)


def _momentum_run(device):
    "A model, its data and a momentum SGD in 'update' mode tracked with T = 2: the run the checkpoint tests resume."
    model, data = CASES[1].build(device)
    sub = DominantSubspace(HessianOperator(model, "ce", data), k=3, refresh_every=2, oversample=1)
    opt = ProjectedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), sub, 0.1, 1.0, "update")
    return model, data, opt


def _ce_steps(model, data, opt, rng):
    "One step per seed in `rng`, each on 8 samples drawn with that seed."
    X, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    for s in rng:
        idx = torch.randperm(len(X), generator=torch.Generator().manual_seed(s))[:8].to(X.device)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
        opt.step()


@pytest.mark.parametrize("device", DEVICE_PARAMS)
def test_checkpoint_on_disk_resumes_exactly(device, tmp_path):
    "torch.save of model + optimizer state mid-run, torch.load into fresh objects: the same trajectory, bit for bit."
    model, data, opt = _momentum_run(device)
    _ce_steps(model, data, opt, range(7))
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    _ce_steps(model, data, opt, range(7, 15))
    model2, data2, opt2 = _momentum_run(device)
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    _ce_steps(model2, data2, opt2, range(7, 15))
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert opt.subspace.n_refreshes == opt2.subspace.n_refreshes == 8


def test_rollback_into_the_same_objects_resumes_exactly():
    "A state loaded back into the same model and optimizer (a step undone in-process): as if the step was never taken."
    model, data, opt = _momentum_run("cpu")
    _ce_steps(model, data, opt, range(12))
    model2, data2, opt2 = _momentum_run("cpu")
    _ce_steps(model2, data2, opt2, range(7))
    ckpt = copy.deepcopy({"model": model2.state_dict(), "opt": opt2.state_dict()})
    _ce_steps(model2, data2, opt2, range(7, 8))  # the step to undo: it updated the tracker at step 8
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    _ce_steps(model2, data2, opt2, range(7, 12))  # step 8 again: it must update the tracker again
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert opt2.subspace.n_updates == opt.subspace.n_updates == 12


@pytest.mark.parametrize("refresh_every", [1, 3])
def test_one_update_per_step_across_the_switch(refresh_every):
    "The switch step updates the tracker once, like every other step: T = 1 refreshes at every step, T = 3 at 1 in 3."
    model, data = CASES[0].build()
    X, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    sub = DominantSubspace(HessianOperator(model, "mse", data), k=3, refresh_every=refresh_every)
    opt = bulk_sgd(torch.optim.SGD(model.parameters(), lr=0.05), sub, switch_threshold=0.5, switch_ema=0.8)
    for s in range(12):
        opt.zero_grad()
        _mse(model, X[s % 3 :: 3], y[s % 3 :: 3]).backward()
        opt.step()
    assert opt.switch_step is not None and 1 < opt.switch_step < 12
    assert sub.n_updates == 12 and sub.n_refreshes == -(-12 // refresh_every)


def test_no_updates_before_start_step_and_none_for_the_base_optimizer():
    "Steps before `start_step` and an (a, b) = (1, 1) wrapper never touch the tracker."
    model, data = CASES[0].build()
    X, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    for (dom, bulk), start, want in [((0.0, 1.0), 4, 6), ((1.0, 1.0), 0, 0)]:
        sub = DominantSubspace(HessianOperator(model, "mse", data), k=3)
        opt = ProjectedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), sub, dom, bulk, start_step=start)
        for s in range(10):
            opt.zero_grad()
            _mse(model, X, y).backward()
            opt.step()
        assert sub.n_updates == sub.n_refreshes == want, (dom, bulk)


@pytest.mark.parametrize("source", ["RandomSubspace", "UpdatePCASubspace"])
def test_leakage_of_a_source_without_data_is_refused_by_name(source):
    "A parameter-space source has no curvature products: `leakage` says so in one line (it was a TypeError on `@`)."
    from subspace_opt import sources

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3)).double()
    opt = bulk_sgd(torch.optim.SGD(net.parameters(), lr=0.1), getattr(sources, source)(net, k=3))
    X, y = torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 3, (12,))
    _mse(net, X, y).backward()
    opt.step()
    with pytest.raises(NotImplementedError, match=r"this source has no data: pass an operator as `params`"):
        opt.leakage(opt.last_update)
