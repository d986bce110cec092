"""Results tables compared the way a resumed run must match an uninterrupted one: every column but the timing."""

import pandas as pd
from subspace_opt.train import TIMING


def assert_same_rows(a: pd.DataFrame, b: pd.DataFrame):
    "Equal tables apart from the `TIMING` columns (wall time differs between any two runs), which both must have."
    for t in (a, b):
        assert set(TIMING) <= set(t.columns), f"no timing columns {TIMING} in {list(t.columns)}"
    pd.testing.assert_frame_equal(a.drop(columns=list(TIMING)), b.drop(columns=list(TIMING)))
