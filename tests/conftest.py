"""pytest fixtures; the helpers themselves live in tests/helpers.py."""
import os

import pytest

from .helpers import DEVICE_PARAMS


@pytest.fixture(params=DEVICE_PARAMS)
def device(request):
    return request.param


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "soak: long-running soak test (tests/test_soak.py); skipped unless selected "
        "with -m soak (as .ci/run does) or VAE_FUSED_SOAK=1")


def pytest_collection_modifyitems(config, items):
    """Soak tests run only when asked for: `-m` naming `soak`, or VAE_FUSED_SOAK=1.
    The default run (README's test command) skips them with this reason."""
    if "soak" in (config.getoption("markexpr") or "") or os.environ.get("VAE_FUSED_SOAK") == "1":
        return
    skip = pytest.mark.skip(reason="soak test: run with `python -m pytest -m soak` (CI does) or VAE_FUSED_SOAK=1")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)
