"""Tests of serving plumbing (balancing, draining, limits, client workers) that never read what the model
says: an untrained engine of the embedded model's shape serves them (tests/conftest.py `untrained`), so
they run while the real model is still training. Same names as the suite's fixtures, so the tests read as
the others do."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def workspace(untrained):
    return untrained.workspace


@pytest.fixture(scope="module")
def engine_dirs(untrained):
    return untrained.engine_dirs


@pytest.fixture(scope="module")
def limits(untrained):
    return untrained.limits
