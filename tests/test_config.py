"""Experiment configurations: every bad value is refused when read, with one line naming its key; every good one loads
as written (the experiments' recorded configurations, the demo), and files from users are read defensively."""

import io
import itertools
import json
import os
import time
import tracemalloc
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import pytest
import torch

from subspace_opt.config import (
    ACCEPTED,
    BASE_OPTIMIZERS,
    MAX_CONFIG_BYTES,
    MODELS,
    PRESETS,
    ConfigError,
    ExperimentConfig,
    MethodConfig,
    SubspaceConfig,
    UserError,
    config_from_dict,
    load_config,
    load_experiment_data,
    make_base_optimizer,
    make_model,
    preset_arguments,
    read_config_file,
)
from subspace_opt.train import _run_spec, check_rank

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "nbs" / "experiments" / "runs"
METHOD = "methods:\n  - {name: a, lr: 0.1}\n"

# A YAML "billion laughs": twelve levels of nine aliases each, 9**12 strings written in 551 bytes.
_LEVELS = "abcdefghijkl"


def _level(prev, x):
    items = [f"*{prev}"] * 9 if prev else ['"lol"'] * 9
    return f"{x}: &{x} [{', '.join(items)}]\n"


BOMB = "".join(_level(p, x) for p, x in zip([None, *_LEVELS], _LEVELS)) + "run: *l\n"


def _one_line_naming(e: pytest.ExceptionInfo, key: str):
    msg = str(e.value)
    assert "\n" not in msg and "\r" not in msg, f"not one line: {msg!r}"
    assert key in msg, f"{key!r} not in {msg!r}"


# (what is wrong, YAML of the whole configuration, the key the message must name)
BAD = [
    ("hidden width 0", "hidden: [0]\n" + METHOD, "`config.hidden[0]`"),
    ("hidden width 1.5", "hidden: [16, 1.5]\n" + METHOD, "`config.hidden[1]`"),
    ("cnn with two widths", "model: cnn\nhidden: [8, 8]\n" + METHOD, "`config.hidden`"),
    ("k 0", "subspace: {k: 0}\n" + METHOD, "`config.subspace.k`"),
    ("k -3", "subspace: {k: -3}\n" + METHOD, "`config.subspace.k`"),
    ("k true", "subspace: {k: true}\n" + METHOD, "`config.subspace.k`"),
    ("k 2.0", "subspace: {k: 2.0}\n" + METHOD, "`config.subspace.k`"),
    ("n_eigs 0", "subspace: {n_eigs: 0}\n" + METHOD, "`config.subspace.n_eigs`"),
    ("n_eigs below k", "subspace: {k: 5, n_eigs: 3}\n" + METHOD, "`config.subspace.n_eigs`"),
    ("n_hessian -5", "subspace: {n_hessian: -5}\n" + METHOD, "`config.subspace.n_hessian`"),
    ("refresh_every 0", "subspace: {refresh_every: 0}\n" + METHOD, "`config.subspace.refresh_every`"),
    ("tol 0", "subspace: {tol: 0}\n" + METHOD, "`config.subspace.tol`"),
    ("tol nan", "subspace: {tol: .nan}\n" + METHOD, "`config.subspace.tol`"),
    ("diverge_factor 0", "diverge_factor: 0\n" + METHOD, "`config.diverge_factor`"),
    ("diverge_factor 1", "diverge_factor: 1\n" + METHOD, "`config.diverge_factor`"),
    ("diverge_factor nan", "diverge_factor: .nan\n" + METHOD, "`config.diverge_factor`"),
    ("steps 1.5", "steps: 1.5\n" + METHOD, "`config.steps`"),
    ("steps 0", "steps: 0\n" + METHOD, "`config.steps`"),
    ("steps true", "steps: true\n" + METHOD, "`config.steps`"),
    ("batch_size 0", "batch_size: 0\n" + METHOD, "`config.batch_size`"),
    ("log_every 0", "log_every: 0\n" + METHOD, "`config.log_every`"),
    ("checkpoint_every -1", "checkpoint_every: -1\n" + METHOD, "`config.checkpoint_every`"),
    ("snapshot_every 0", "snapshot_every: 0\n" + METHOD, "`config.snapshot_every`"),
    ("lr 0", "methods: [{name: a, lr: 0}]\n", "`config.methods[0].lr`"),
    ("lr nan", "methods: [{name: a, lr: .nan}]\n", "`config.methods[0].lr`"),
    ("lr inf", "methods: [{name: a, lr: .inf}]\n", "`config.methods[0].lr`"),
    ("lr -inf", "methods: [{name: a}, {name: b, lr: -.inf}]\n", "`config.methods[1].lr`"),
    ("lr overflows to inf", "methods: [{name: a, lr: 1.0e+400}]\n", "`config.methods[0].lr`"),
    ("lr as text", "methods: [{name: a, lr: fast}]\n", "`config.methods[0].lr`"),
    ("momentum 1.5", "methods: [{name: a, base: momentum, momentum: 1.5}]\n", "`config.methods[0].momentum`"),
    ("momentum -0.1", "methods: [{name: a, momentum: -0.1}]\n", "`config.methods[0].momentum`"),
    ("momentum 1", "methods: [{name: a, momentum: 1}]\n", "`config.methods[0].momentum`"),
    ("dom nan", "methods: [{name: a, dom: .nan}]\n", "`config.methods[0].dom`"),
    ("bulk negative", "methods: [{name: a, bulk: -1}]\n", "`config.methods[0].bulk`"),
    ("start_step -1", "methods: [{name: a, start_step: -1}]\n", "`config.methods[0].start_step`"),
    ("seeds repeated", "seeds: [0, 0]\n" + METHOD, "`config.seeds`"),
    ("seeds empty", "seeds: []\n" + METHOD, "`config.seeds`"),
    ("seed negative", "seeds: [1, -1]\n" + METHOD, "`config.seeds[1]`"),
    ("seed too large", "seeds: [4294967296]\n" + METHOD, "`config.seeds[0]`"),
    ("seed true", "seeds: [true]\n" + METHOD, "`config.seeds`"),
    ("method name empty", "methods: [{name: ''}]\n", "`config.methods[0].name`"),
    ("method name nan", "methods: [{name: nan}]\n", "`config.methods[0].name`"),
    ("method name NA", "methods: [{name: a}, {name: NA}]\n", "`config.methods[1].name`"),
    ("method name 'null'", "methods: [{name: 'null'}]\n", "`config.methods[0].name`"),
    ("method name 1e3", "methods: [{name: 1e3}]\n", "`config.methods[0].name`"),
    ("method name escapes", "methods: [{name: ../../escaped}]\n", "`config.methods[0].name`"),
    ("method name hidden", "methods: [{name: .hidden}]\n", "`config.methods[0].name`"),
    ("method name with a slash", "methods: [{name: a/b}]\n", "`config.methods[0].name`"),
    ("method name null", "methods: [{name: null}]\n", "`config.methods[0].name`"),
    ("method names repeated", "methods: [{name: a}, {name: b}, {name: a, lr: 0.1}]\n", "`config.methods`"),
    ("experiment name escapes", "name: ../x\n" + METHOD, "`config.name`"),
    ("experiment name inf", "name: inf\n" + METHOD, "`config.name`"),
    ("unknown preset", "methods: [{name: a, preset: adagrad}]\n", "`config.methods[0].preset`"),
    (
        "preset wrong argument",
        "methods: [{name: a, preset: damped_dominant_sgd, beta: 2}]\n",
        "`config.methods[0].beta`",
    ),
    ("preset missing argument", "methods: [{name: a, preset: dom_bulk_sgd}]\n", "`config.methods[0].gamma`"),
    ("preset beside dom", "methods: [{name: a, preset: dom_sgd, dom: 0.5}]\n", "`config.methods[0].dom`"),
    ("preset argument nan", "methods: [{name: a, preset: damped_dominant_sgd, alpha: .nan}]\n", "methods[0].alpha`"),
    ("preset argument out of range", "methods: [{name: a, preset: dom_bulk_sgd, gamma: 2}]\n", "methods[0].gamma`"),
    ("device unknown", "device: gpu\n" + METHOD, "`config.device`"),
    ("data_args unknown", "data_args: {n_trian: 10}\n" + METHOD, "`config.data_args.n_trian`"),
    ("data_args nan", "data: gaussian-mixture\ndata_args: {separation: .nan}\n" + METHOD, "data_args.separation`"),
    ("unknown key", "stpes: 10\n" + METHOD, "`config.stpes`"),
    ("key with a line break", '"st\\neps": 10\n' + METHOD, "config['st\\neps']"),
    ("repeated key", "steps: 10\nsteps: 20\n" + METHOD, "'steps' repeated"),
    ("not a mapping", "- steps\n", "`config`"),
]


@pytest.mark.parametrize("text, key", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_is_refused_with_one_line_naming_the_key(tmp_path, text, key):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    _one_line_naming(e, key)
    assert isinstance(e.value, UserError)  # the command line prints it as one line and exits 2


BAD_JSON = [
    ("lr NaN", '{"methods": [{"name": "a", "lr": NaN}]}', "`config.methods[0].lr`"),
    ("lr Infinity", '{"methods": [{"name": "a", "lr": Infinity}]}', "`config.methods[0].lr`"),
    ("lr 1e400", '{"methods": [{"name": "a", "lr": 1e400}]}', "`config.methods[0].lr`"),
    ("k true", '{"subspace": {"k": true}, "methods": [{"name": "a"}]}', "`config.subspace.k`"),
    ("repeated key", '{"steps": 5, "methods": [{"name": "a"}], "steps": 6}', "'steps' repeated"),
    ("repeated nested key", '{"methods": [{"name": "a", "lr": 0.1, "lr": 0.2}]}', "'lr' repeated"),
    ("bad syntax", '{"steps": 5,', "c.json"),
    ("nested too deeply", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
]


@pytest.mark.parametrize("text, key", [b[1:] for b in BAD_JSON], ids=[b[0] for b in BAD_JSON])
def test_bad_json_is_refused_with_one_line(tmp_path, text, key):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    _one_line_naming(e, key)


def test_the_alias_bomb_is_refused_at_once_without_building_it(tmp_path):
    "A 551-byte YAML whose aliases stand for 9**12 strings: refused from its events, before any value is built."
    assert len(BOMB) == 551 and BOMB.count("*") == 11 * 9 + 1
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    for _ in range(20):  # timing below: the same answer every time
        tracemalloc.start()
        t = time.perf_counter()
        with pytest.raises(ConfigError) as e:
            load_config(path)
        elapsed, peak = time.perf_counter() - t, tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        _one_line_naming(e, "bomb.yaml")
        assert "anchors and aliases" in str(e.value) and "line 1" in str(e.value)
        assert elapsed < 1.0 and peak < 5e6, (elapsed, peak)


@pytest.mark.parametrize("text", ["a: &x 1\n" + METHOD, "base: &b {lr: 0.1}\nmethods: [{name: a, <<: *b}]\n"])
def test_any_anchor_or_alias_is_refused(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="anchors and aliases"):
        read_config_file(path)


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(METHOD + "#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError) as e:
        read_config_file(path)
    _one_line_naming(e, "big.yaml")
    assert "larger than 1048576 bytes (1 MiB)" in str(e.value)
    path.write_text(METHOD + "#" * (MAX_CONFIG_BYTES - len(METHOD) - 1) + "\n")  # exactly the limit: read
    assert load_config(path).methods == [MethodConfig("a", lr=0.1)]


def test_an_endless_file_is_refused_without_reading_it_all():
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    with pytest.raises(ConfigError, match="larger than"):
        read_config_file("/dev/zero")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.yaml", "does not exist"),
        (lambda d: d, "cannot read config file"),  # a folder
        (lambda d: (d / "bad.yaml").write_text("steps: 5\nmethods: [{name: a}\n") and d / "bad.yaml", "cannot parse"),
        (lambda d: (d / "tab.yaml").write_text("steps:\t\t- 5\n  x") and d / "tab.yaml", "cannot parse"),
        (lambda d: (d / "latin.yaml").write_bytes(b"name: caf\xe9\n") and d / "latin.yaml", "not UTF-8 text"),
        (
            lambda d: (d / "obj.yaml").write_text("steps: !!python/object/apply:os.system [x]\n") and d / "obj.yaml",
            "tag",
        ),
        (lambda d: (d / "deep.yaml").write_text("[" * 5000 + "]" * 5000) and d / "deep.yaml", "nested too deeply"),
    ],
    ids=["missing", "folder", "bad yaml", "bad indentation", "not utf-8", "python tag", "deep yaml"],
)
def test_unreadable_files_are_one_line_errors(tmp_path, make, message):
    path = make(tmp_path)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    _one_line_naming(e, message)
    assert Path(path).name in str(e.value)


def test_what_names_a_folder_or_a_table_entry_survives_a_csv_round_trip():
    "Every name accepted comes back from a CSV as the same string; every name pandas reads as data is refused."
    alphabet = "019.-_eEnNaAiIfFtTlLuU"
    candidates = ["".join(c) for n in (1, 2, 3) for c in itertools.product(alphabet, repeat=n)]
    candidates += ["null", "NULL", "None", "true", "True", "FALSE", "nan", "-nan", "inf", "-Infinity", "1e3", "1_000"]
    accepted, refused = [], []
    for name in candidates:
        try:
            config_from_dict({"methods": [{"name": name}]})
            accepted.append(name)
        except ConfigError as e:
            assert "`config.methods[0].name`" in str(e)
            refused.append(name)
    header = ",".join(f"c{i}" for i in range(len(accepted)))
    back = pd.read_csv(io.StringIO(header + "\n" + ",".join(accepted) + "\n"))
    assert list(back.iloc[0]) == accepted and all(isinstance(v, str) for v in back.iloc[0])
    header = ",".join(f"c{i}" for i in range(len(refused)))
    back = pd.read_csv(io.StringIO(header + "\n" + ",".join(refused) + "\n"))
    reads_as_data = [n for n, v in zip(refused, back.iloc[0]) if not isinstance(v, str)]
    assert {"nan", "NA", "null", "None", "True", "1e3", "01", "inf", "-nan"} <= set(reads_as_data)
    for name in candidates:  # anything Python reads as a number, NaN or infinity is refused
        try:
            float(name)
        except ValueError:
            continue
        assert name in refused, name
    assert {"e", "1e", "nano", "1-1", "-e", "n.a", "tail"} & set(candidates) <= set(accepted)


# ---- good configurations ----


def _recorded(name, at_least=1):
    "The files `name` of the runs the experiment notebooks leave under nbs/experiments/runs (`nbdev_test` makes them)."
    found = sorted(RUNS.rglob(name))
    if len(found) < at_least:
        missing = f"{len(found)} recorded {name} under {RUNS}, not {at_least}: run nbdev_test first"
        if os.environ.get("CI") == "true":  # .ci/run runs nbdev_test before pytest: there they must exist
            pytest.fail(f"CI=true but {missing}")
        pytest.skip(missing)
    return found


def test_the_experiments_recorded_sweeps_still_load():
    from subspace_opt.sweep import expand_grid

    sweeps = _recorded("sweep.json", at_least=10)
    for path in sweeps:
        d = json.loads(path.read_text())
        points = expand_grid(d["base"], d["grid"])
        assert points and all(isinstance(cfg, ExperimentConfig) for _, _, cfg in points), path
        for _, _, cfg in points:
            assert config_from_dict(asdict(cfg)) == cfg  # what the runner writes back reads as the same config


def test_every_recorded_run_specification_loads_as_written():
    "The runner keys a run folder on its specification: a valid one must load to exactly the same values."
    specs = _recorded("run.json", at_least=50)
    for path in specs:
        spec = json.loads(path.read_text())
        cfg = config_from_dict({**spec["config"], "methods": [spec["method"]], "seeds": [spec["seed"]]})
        assert asdict(cfg.methods[0]) == spec["method"], path
        again = _run_spec(cfg, cfg.methods[0], spec["seed"])["config"]  # as the runner writes it
        assert {k: v for k, v in again.items() if k in spec["config"]} == spec["config"], path


def test_the_recorded_experiment_configs_load_as_written():
    configs = _recorded("config.json")
    for path in configs:
        d = json.loads(path.read_text())
        d = d.get("config", d)
        assert asdict(config_from_dict(d)) == d, path


def test_the_demo_config_loads():
    from subspace_opt.jobs import DEMO

    cfg = config_from_dict(DEMO)
    assert [m.name for m in cfg.methods] == ["sgd", "dom-sgd", "bulk-sgd", "damped-dominant-0.5"]
    assert config_from_dict({**DEMO, "steps": 5, "device": None}).steps == 5
    assert config_from_dict({**DEMO, "device": "cpu"}).device == "cpu"


def test_yaml_and_json_of_the_same_config_agree(tmp_path):
    d = dict(
        name="E-1.b",
        data="gaussian-mixture",
        data_args={"n_train": 40, "separation": 2.5},
        hidden=[8],
        steps=3,
        seeds=[2, 0],
        subspace={"k": 2, "n_eigs": 4, "tol": 0.05},
        methods=[
            {"name": "sgd", "lr": 1, "base": "momentum", "momentum": 0.0},
            {"name": "damped", "preset": "damped_dominant_sgd", "alpha": 0.9, "base": "adam"},
            {"name": "amp", "preset": "bulk_amplified_sgd", "beta": 2},
        ],
    )
    (tmp_path / "c.json").write_text(json.dumps(d))
    (tmp_path / "c.yaml").write_text(json.dumps(d))  # JSON is YAML too
    a, b = load_config(tmp_path / "c.json"), load_config(tmp_path / "c.yaml")
    assert a == b
    assert (a.methods[0].lr, type(a.methods[0].lr), a.seeds) == (1.0, float, [2, 0])
    assert (a.methods[1].dom, a.methods[1].bulk, a.methods[1].base) == (1.0 - 0.9, 1.0, "adam")
    assert (a.methods[2].dom, a.methods[2].bulk) == (1.0, 2.0)
    assert config_from_dict(asdict(a)) == a  # resolved presets round-trip as plain coefficients


@pytest.mark.parametrize("preset", list(PRESETS))
def test_each_preset_resolves_to_the_coefficients_of_its_optimizer(preset):
    from subspace_opt.curvature import HessianOperator
    from subspace_opt.subspace import DominantSubspace

    values = {"dom": 0.5, "bulk": 1.5, "alpha": 0.25, "beta": 3, "gamma": 0.75}
    args = {a: values[a] for a in preset_arguments(preset)}
    cfg = config_from_dict(
        dict(hidden=[4], data_args={"n_train": 30}, methods=[{"name": "m", "preset": preset, **args}])
    )
    data = load_experiment_data(cfg, "cpu")
    model = make_model(cfg, data, 0)
    sub = DominantSubspace(HessianOperator(model, "mse", (data.X_train, data.y_train)), k=2)
    opt = PRESETS[preset][0](torch.optim.SGD(model.parameters(), lr=0.1), sub, **args)
    assert (cfg.methods[0].dom, cfg.methods[0].bulk) == (opt.dom, opt.bulk)


def test_the_accepted_names_come_from_the_registries():
    assert ACCEPTED["model"] == tuple(MODELS) and ACCEPTED["base"] == tuple(BASE_OPTIMIZERS)
    assert ACCEPTED["preset"] == tuple(PRESETS)
    with pytest.raises(ConfigError, match="must be one of sgd, momentum, adam; got 'rmsprop'"):
        config_from_dict({"methods": [{"name": "a", "base": "rmsprop"}]})
    with pytest.raises(ConfigError, match="must be one of " + ", ".join(PRESETS)):
        config_from_dict({"methods": [{"name": "a", "preset": "sgd"}]})
    opt = make_base_optimizer(
        MethodConfig("m", base="momentum", lr=0.3, momentum=0.5), [torch.zeros(2, requires_grad=True)]
    )
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.5


# ---- the rank against the parameter count ----


def test_check_rank_refuses_a_rank_not_below_the_parameter_count():
    cfg = config_from_dict({"hidden": [1], "data_args": {"n_train": 30}, "methods": [{"name": "a"}]})
    data = load_experiment_data(cfg, "cpu")
    p = sum(q.numel() for q in make_model(cfg, data, 0).parameters())
    assert p == 85  # 64 -> 1 -> 10
    with_k = lambda k, n_eigs=None: ExperimentConfig(subspace=SubspaceConfig(k=k, n_eigs=n_eigs))
    assert check_rank(with_k(84), p) == 84
    assert check_rank(cfg, p, n_classes=data.n_classes) == 10  # null: the number of classes
    for bad, key in [(with_k(85), "`config.subspace.k`"), (with_k(500), "`config.subspace.k`")]:
        with pytest.raises(ConfigError) as e:
            check_rank(bad, p)
        _one_line_naming(e, key)
        assert "p=85" in str(e.value)
    with pytest.raises(ConfigError) as e:
        check_rank(cfg, 10, n_classes=10)
    _one_line_naming(e, "`config.subspace.k`")
    assert "null (the number of classes, 10)" in str(e.value)
    with pytest.raises(ConfigError) as e:
        check_rank(with_k(3, n_eigs=85), p)
    _one_line_naming(e, "`config.subspace.n_eigs`")
    with pytest.raises(ConfigError) as e:
        check_rank(with_k(None, n_eigs=5), p, n_classes=10)
    _one_line_naming(e, "`config.subspace.n_eigs`")
