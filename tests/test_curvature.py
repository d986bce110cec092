"""Every curvature operator against its dense float64 matrix, on every case and device (cross-cutting tests)."""

import math
import warnings

import pytest
import torch
from cases import CASES, DEVICE_PARAMS
from subspace_opt.curvature import FunctionalHessianOperator, GGNOperator, HessianOperator, compiler_available
from subspace_opt.dense_reference import F32_RTOL, F64_RTOL, dense_functional_hessian, dense_ggn, dense_hessian, rel_err

OPERATORS = {
    "hessian": (HessianOperator, dense_hessian),
    "ggn": (GGNOperator, dense_ggn),
    "functional": (FunctionalHessianOperator, dense_functional_hessian),
}


@pytest.fixture(scope="module")
def dense_cache():
    return {}


def _dense(cache, case, name):
    "Dense float64 reference on the CPU, computed once per case and operator."
    if (case.id, name) not in cache:
        model, data = case.build("cpu")
        cache[case.id, name] = OPERATORS[name][1](model, case.loss, data)
    return cache[case.id, name]


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("name", list(OPERATORS))
@pytest.mark.parametrize("method", ["forward", "reverse"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_operator_matches_dense(case, name, method, device, dense_cache):
    M = _dense(dense_cache, case, name)
    model, data = case.build(device)
    op = OPERATORS[name][0](model, case.loss, data, method=method)
    p = M.shape[0]
    assert op.shape == (p, p) and op.dtype == torch.float64 and op.device.type == device
    V = torch.randn(p, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert rel_err(op @ torch.eye(p, dtype=torch.float64, device=device), M) <= F64_RTOL  # block = every column
    assert rel_err(op @ V[:, 0].to(device), M @ V[:, 0]) <= F64_RTOL  # single vector
    assert rel_err(op.to_scipy() @ V.numpy(), M @ V) <= F64_RTOL  # scipy, numpy in and out
    assert rel_err(torch.from_numpy(op.to_scipy().matvec(V[:, 1].numpy())), M @ V[:, 1]) <= F64_RTOL


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_algebra_and_chunking(case, device, dense_cache):
    "H − G through operator algebra equals the functional Hessian; chunking by batch_size changes nothing."
    model, data = case.build(device)
    H, G = HessianOperator(model, case.loss, data), GGNOperator(model, case.loss, data)
    p = H.shape[0]
    I = torch.eye(p, dtype=torch.float64, device=device)
    assert rel_err((H - G) @ I, _dense(dense_cache, case, "functional")) <= F64_RTOL
    assert (
        rel_err((2.0 * H + G * -1.0) @ I, 2 * _dense(dense_cache, case, "hessian") - _dense(dense_cache, case, "ggn"))
        <= F64_RTOL
    )
    X, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    for chunked in (HessianOperator(model, case.loss, (X, y), batch_size=4), HessianOperator(model, case.loss, (X, y))):
        assert rel_err(chunked @ I, _dense(dense_cache, case, "hessian")) <= F64_RTOL


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("case", CASES[:2] + CASES[5:6], ids=[c.id for c in CASES[:2] + CASES[5:6]])
def test_float32_matches_dense(case, device, dense_cache):
    "A float32 model's operators agree with the float64 dense matrices to float32 accuracy."
    model, data = case.build(device, torch.float32)
    for name, (Op, _) in OPERATORS.items():
        op = Op(model, case.loss, data)
        assert op.dtype == torch.float32
        assert rel_err(op @ torch.eye(op.shape[0], device=device), _dense(dense_cache, case, name)) <= F32_RTOL


def test_dataloader_and_iterable_data():
    case = CASES[0]
    model, data = case.build()
    X, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    dl = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, y), batch_size=5, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    op = HessianOperator(model, case.loss, dl)
    assert [len(b[0]) for b in op.batches] == [5, 5, 5, 2] and op.n == 17
    assert (
        rel_err(op @ torch.eye(op.shape[0], dtype=torch.float64), dense_hessian(model, case.loss, (X, y))) <= F64_RTOL
    )
    assert (
        rel_err(
            HessianOperator(model, case.loss, iter(data)) @ torch.eye(op.shape[0], dtype=torch.float64),
            dense_hessian(model, case.loss, (X, y)),
        )
        <= F64_RTOL
    )


# Negative cases: refused with a message that names the problem and the fix.
def _with(module):
    model, data = CASES[0].build()
    return torch.nn.Sequential(model, module).double(), data


def test_refuses_dropout():
    model, data = _with(torch.nn.Dropout(0.2))
    with pytest.raises(ValueError, match=r"layer '1' \(Dropout\) is in training mode.* call `model.eval\(\)`"):
        HessianOperator(model, "mse", data)
    HessianOperator(model.eval(), "mse", data)  # eval mode is deterministic


def test_refuses_train_mode_batchnorm_and_leaves_its_statistics():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3)).double().train()
    _, data = CASES[0].build()
    before = model[1].running_mean.clone()
    with pytest.raises(ValueError, match=r"layer '1' \(BatchNorm1d\) is in training mode"):
        GGNOperator(model, "mse", data)
    assert torch.equal(model[1].running_mean, before)


def test_refuses_drop_last_and_bad_input():
    model, data = CASES[0].build()
    X, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y), batch_size=5, drop_last=True)
    with pytest.raises(ValueError, match="drop_last=True"):
        HessianOperator(model, "mse", dl)
    with pytest.raises(ValueError, match=r"X and y differ in length \(17 vs 16\)"):
        HessianOperator(model, "mse", (X, y[:-1]))
    with pytest.raises(ValueError, match="holds no samples"):
        HessianOperator(model, "mse", [])
    with pytest.raises(ValueError, match=r"labels in `y` must lie in \[0, 3\)"):
        HessianOperator(model, "ce", (X, y + 5))
    op = HessianOperator(model, "mse", data)
    with pytest.raises(ValueError, match=rf"with p={op.shape[0]}, got \({op.shape[0] + 1},\)"):
        op @ torch.ones(op.shape[0] + 1)
    with pytest.raises(ValueError, match="got \\(3, 2, 1\\)"):
        op @ torch.ones(3, 2, 1)


class _FirstOrderTanh(torch.autograd.Function):
    "tanh whose backward cannot be differentiated again and which has no forward-mode rule."

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.tanh()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (1 - x.tanh() ** 2)


class _FirstOrderNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 5), torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.b(_FirstOrderTanh.apply(self.a(x)))


def test_refuses_model_without_second_derivatives():
    _, data = CASES[0].build()
    with pytest.raises(RuntimeError, match=r"`method='auto'`: no autodiff method gives exact second derivatives"):
        HessianOperator(_FirstOrderNet().double(), "mse", data)
    with pytest.raises(RuntimeError, match=r"double backward does not reach parameters \['a.weight', 'a.bias'\]"):
        GGNOperator(_FirstOrderNet().double(), "ce", data, method="reverse")


# NaN and inf: refused where they enter (the data, the vector), and named where they surface (a product).
def _message(excinfo):
    "The error's message, which must be one line."
    assert "\n" not in str(excinfo.value), str(excinfo.value)
    return str(excinfo.value)


@pytest.mark.parametrize("name", list(OPERATORS))
@pytest.mark.parametrize(
    "case_index, where, bad, expected",
    [
        (0, ("X", 0, (2, 1)), math.nan, "X holds NaN or inf at sample 2"),
        (0, ("X", 1, (4, 0)), math.inf, "X holds NaN or inf at sample 15"),  # second batch: 11 + 4
        (4, ("y", 1, (0, 2)), -math.inf, "y holds NaN or inf at sample 11"),  # float targets for MSE
        (5, ("X", 0, (3, 0, 1, 2)), math.nan, "X holds NaN or inf at sample 3"),  # images
    ],
)
def test_refuses_nonfinite_data(name, case_index, where, bad, expected):
    "NaN in the data used to pass construction and surface as a `linalg.eigh` failure inside a solver."
    case = CASES[case_index]
    model, data = case.build()
    tensor, batch, index = where
    data[batch][0 if tensor == "X" else 1][index] = bad
    with pytest.raises(ValueError, match=r"^`data` must be finite: ") as e:
        OPERATORS[name][0](model, case.loss, data)
    assert expected in _message(e)


@pytest.mark.parametrize("name", list(OPERATORS))
@pytest.mark.parametrize("method", ["forward", "reverse"])
def test_nonfinite_parameters_refuse_the_product(name, method):
    model, data = CASES[1].build()
    op = OPERATORS[name][0](model, CASES[1].loss, data, method=method)
    v = torch.randn(op.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    good, bias = op @ v, model[2].bias[1].item()
    with torch.no_grad():
        model[2].bias[1] = math.nan
    for x in (v, torch.stack([v, v], 1)):
        with pytest.raises(FloatingPointError) as e:
            op @ x
        text = _message(e)
        assert text.startswith(f"{type(op).__name__}(shape={op.shape}, dtype=torch.float64, device=cpu) @ v is not")
        assert text.endswith("the model's parameters or the data are not finite (NaN or inf in 2.bias)")
    with pytest.raises(FloatingPointError, match=r"NaN or inf in 2\.bias"):
        op.to_scipy().matvec(v.numpy())
    twice = op - 2 * OPERATORS[name][0](model, CASES[1].loss, data, method=method, check_determinism=False)
    with pytest.raises(FloatingPointError) as e:
        twice @ v
    assert _message(e).count("2.bias") == 1  # both terms give the same reason: it is given once
    with torch.no_grad():
        model[2].bias[1] = bias
    assert torch.allclose(op @ v, good, rtol=1e-12, atol=0)  # usable again once the parameters are


def test_nonfinite_buffers_and_overflow_are_told_apart():
    model, data = CASES[0].build()
    bn = torch.nn.Sequential(model, torch.nn.BatchNorm1d(3)).double().eval()
    op = HessianOperator(bn, "mse", data)
    v = torch.ones(op.shape[0], dtype=torch.float64)
    bn[1].running_var[2] = math.nan
    with pytest.raises(FloatingPointError) as e:
        op @ v
    assert _message(e).endswith("(NaN or inf in 1.running_var)")
    bn[1].running_var[2] = 1.0
    with torch.no_grad():
        for q in model.parameters():
            q.mul_(1e200)  # finite, but the outputs and the loss overflow
    with pytest.raises(FloatingPointError) as e:
        op @ v
    assert _message(e).endswith(
        "the model's parameters and the data are finite on this rank, so the outputs or the loss overflowed"
    )


def test_data_changed_in_place_after_construction_is_named():
    "The operator holds the caller's tensors when no copy is needed, so later in-place edits reach it."
    model, data = CASES[0].build()
    op = GGNOperator(model, "mse", data)
    data[1][0][2, 3] = math.nan
    with pytest.raises(
        FloatingPointError, match=r"the model's parameters or the data are not finite \(NaN or inf in data\)$"
    ):
        op @ torch.ones(op.shape[0], dtype=torch.float64)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_refuses_nonfinite_v(bad):
    model, data = CASES[0].build()
    op = HessianOperator(model, "mse", data)
    v = torch.ones(op.shape[0], dtype=torch.float64)
    v[7] = bad
    for x in (v, torch.stack([torch.ones_like(v), v], 1), v.numpy()):
        with pytest.raises(
            ValueError, match=r"^`v` must be finite in the operator's dtype, got NaN or inf entries"
        ) as e:
            op @ x
        assert "(HessianOperator(shape=" in _message(e)
    with pytest.raises(ValueError, match="`v` must be finite"):
        op.to_scipy().matvec(v.numpy())


@pytest.mark.parametrize("device", DEVICE_PARAMS)
@pytest.mark.parametrize("case", CASES[5:6], ids=[c.id for c in CASES[5:6]])
def test_compiled_products_match_dense(case, device, dense_cache):
    "`compile=True` (torch.compile; Triton kernels on a GPU): the three operators against their dense matrices."
    if not compiler_available(device):
        pytest.skip(f"torch.compile has no {'Triton' if device == 'cuda' else 'C++ compiler'} here")
    model, data = case.build(device)
    p = sum(q.numel() for q in model.parameters())
    I = torch.eye(p, dtype=torch.float64, device=device)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", ".*torch.compile failed")  # a fallback to uncompiled products fails the test
        for name, (cls, _) in OPERATORS.items():
            op = cls(model, case.loss, data, compile=True)
            assert rel_err(op @ I, _dense(dense_cache, case, name)) <= F64_RTOL, name
            assert op.compile and op.method == "forward", name


@pytest.mark.parametrize("name", list(OPERATORS))
def test_products_and_gradient_ignore_an_enclosing_autocast(name):
    "Inside `torch.autocast` (bfloat16 on the CPU) products and the gradient keep float32 accuracy."
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    X, y = torch.randn(20, 6), torch.randint(0, 3, (20,))
    op = OPERATORS[name][0](model, "ce", (X, y))
    V = torch.randn(op.shape[0], 3)
    plain, g = op @ V, op.gradient()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half, g_half = op @ V, op.gradient()
    assert half.dtype == torch.float32 and rel_err(half, plain) < 1e-6 and rel_err(g_half, g) < 1e-6
