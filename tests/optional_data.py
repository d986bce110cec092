"""Tests that need a data set which a fresh machine does not have (Fashion-MNIST): skipped there with a one-line reason,
required where CI runs (`.ci/run` installs Debian's package), so a missing install step fails instead of hiding."""

import os
import pytest
from subspace_opt.data import INSTALL_HINTS, data_available

IN_CI = os.environ.get("CI") == "true"


def needs_data(name: str):
    "Mark a test that reads data set `name`: skip with a one-line reason where it is not installed, except in CI."
    if IN_CI or data_available(name):
        return pytest.mark.needs_data
    return pytest.mark.skip(reason=f"{name} not installed (optional; {INSTALL_HINTS[name]})")
