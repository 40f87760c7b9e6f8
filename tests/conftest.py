"""pytest fixtures; the helpers themselves live in tests/helpers.py."""
import pytest

from .helpers import DEVICE_PARAMS


@pytest.fixture(params=DEVICE_PARAMS)
def device(request):
    return request.param
