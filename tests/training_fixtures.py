"""Fixtures of the trainer tests (a pytest plugin: `pytest_plugins = ("training_fixtures",)` in a test module)."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_helpers import make_shapes, reset_accelerate_state


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    """The tiny embedded shapes data (`training_helpers.make_shapes`), once per test module."""
    return make_shapes(tmp_path_factory.mktemp("shapes"))


@pytest.fixture()
def fresh_accelerate_state():
    """accelerate's process-wide state reset before and after the test."""
    reset_accelerate_state()
    yield
    reset_accelerate_state()
