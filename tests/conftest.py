"""Session settings and fixtures; the helpers are in tests/helpers.py."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Ray (tests/test_ray_job.py) on loopback only, with no usage report: see bindings/ray_job.py start_ray.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from tests.helpers import Workspace  # noqa: E402  (after the settings above: it imports transformers' users)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """The tiny checkpoints, their GGUFs and reference runs, built on first use and shared by every test."""
    return Workspace(tmp_path_factory.mktemp("fixtures"))
