"""Mini-batch operators on torch.distributed (gloo, 2 CPU processes): `with_data` on each rank's share of a mini-batch
gives the products of one process on the whole mini-batch, without re-running the constructor's probes."""

import torch
from subspace_opt.curvature import GGNOperator, HessianOperator
from subspace_opt.distributed import rank, run_processes
from subspace_opt.models import mlp
from subspace_opt.sources import MinibatchSubspace

OP_RTOL = 1e-10  # float64 products: the ranks' partial sums are added in another order than one process adds them
SHARDS = {"full": [40, 23], "batch": [(0, 7), (40, 43)], "empty": [(0, 9), (40, 40)]}  # unequal; one rank may hold none


def _task(seed=0):
    g = torch.Generator().manual_seed(seed)
    X, y = torch.randn(63, 8, generator=g, dtype=torch.float64), torch.randint(0, 3, (63,), generator=g)
    V = torch.randn(8 * 12 + 12 + 12 * 3 + 3, 4, generator=g, dtype=torch.float64)
    return X, y, V, mlp((8, 12, 3), seed=seed, dtype=torch.float64)


def _on_ranks():
    "On every rank: operators on this rank's share of the training set, then on its share of two mini-batches."
    X, y, V, model = _task()
    a = 0 if rank() == 0 else SHARDS["full"][0]
    full = (X[a : a + SHARDS["full"][rank()]], y[a : a + SHARDS["full"][rank()]])
    out = {}
    for cls in (HessianOperator, GGNOperator):
        op = cls(model, "ce", full)
        for name in ("batch", "empty"):
            lo, hi = SHARDS[name][rank()]
            mb = op.with_data((X[lo:hi], y[lo:hi]))
            out[cls.__name__, name] = (mb @ V, mb.n, mb.n_local, mb.gradient())
    sub = MinibatchSubspace(HessianOperator(model, "ce", full), k=3, cold_tol=1e-10, seed=1)
    lo, hi = SHARDS["batch"][rank()]
    sub.set_batch(X[lo:hi], y[lo:hi])
    sub.update()
    out["basis"] = sub.basis
    return out


def _batch(X, y, name):
    "The whole mini-batch `name`: the ranks' shares, concatenated in rank order."
    return torch.cat([X[lo:hi] for lo, hi in SHARDS[name]]), torch.cat([y[lo:hi] for lo, hi in SHARDS[name]])


def test_with_data_across_ranks():
    X, y, V, model = _task()
    ranks = run_processes(_on_ranks, 2)
    for cls in (HessianOperator, GGNOperator):
        for name in ("batch", "empty"):
            ref = cls(model, "ce", _batch(X, y, name))
            for r, out in enumerate(ranks):
                HV, n, n_local, g = out[cls.__name__, name]
                assert (n, n_local) == (ref.n, SHARDS[name][r][1] - SHARDS[name][r][0])
                assert torch.allclose(HV, ref @ V, rtol=OP_RTOL, atol=OP_RTOL * (ref @ V).abs().max().item())
                assert torch.allclose(g, ref.gradient(), rtol=OP_RTOL, atol=OP_RTOL * ref.gradient().abs().max().item())
    assert torch.equal(ranks[0]["basis"], ranks[1]["basis"])  # the ranks hold one basis
