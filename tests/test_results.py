"""Time-to-target tables survive the CSV files a command line writes and reads: a sweep's `results.csv` in, a
`time_to_target.csv` out, and the comparison made from the file read back."""

import numpy as np
import pandas as pd

from subspace_opt.results import best_vs_best, describe, time_to_target


def _sweep_rows():
    "Rows shaped like a sweep's `results.csv`: two methods, two learning rates, two seeds, one divergence."
    rows = [
        dict(method=m, seed=s, step=t, train_loss=np.exp(-r * lr * (1 + s / 10) * t), hvps=h * t, train_seconds=t / 100)
        | {"diverged": False, "reason": None, "methods.lr": lr}
        for m, r, h in [("sgd", 0.3, 0), ("bulk-sgd", 0.5, 40)]
        for lr in (0.1, 0.4)
        for s in (0, 1)
        for t in range(0, 110, 10)
    ]
    df = pd.DataFrame(rows)
    blown = (df.method == "sgd") & (df["methods.lr"] == 0.4) & (df.seed == 1) & (df.step == 20)
    df.loc[blown, ["train_loss", "diverged", "reason"]] = [np.inf, True, "non-finite train loss"]
    return df[~((df.method == "sgd") & (df["methods.lr"] == 0.4) & (df.seed == 1) & (df.step > 20))]


def test_csv_round_trip(tmp_path):
    rows = _sweep_rows()
    rows.to_csv(tmp_path / "results.csv", index=False)
    ttt = time_to_target(pd.read_csv(tmp_path / "results.csv"), [0.1, 0.03])
    pd.testing.assert_frame_equal(ttt, time_to_target(rows, [0.1, 0.03]))
    assert list(ttt.columns) == ["method", "seed", "methods.lr", "target", "step", "hvps", "train_seconds", "diverged"]
    assert ttt.diverged.sum() == 2  # one diverged run, at both targets
    ttt.to_csv(tmp_path / "time_to_target.csv", index=False)
    back = pd.read_csv(tmp_path / "time_to_target.csv")
    for target in (0.1, 0.03):
        for metric in ("step", "hvps", "train_seconds"):
            pd.testing.assert_frame_equal(
                best_vs_best(back, target, metric), best_vs_best(ttt, target, metric), check_dtype=False
            )
    text = describe(best_vs_best(back, 0.1))
    assert text.splitlines()[0] == "train loss 0.1, in step, best configuration of each method vs bulk-sgd:"
    assert len(text.splitlines()) == 3
