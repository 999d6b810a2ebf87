"""The suite's own plumbing: tests that share a long session-wide run go to one xdist worker."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def made_once_per_session() -> int:
    return os.getpid()


@pytest.mark.parametrize("case", range(2))
def test_tests_sharing_a_session_fixture_are_grouped_onto_one_worker(
    case: int, made_once_per_session: int, request: pytest.FixtureRequest
) -> None:
    """loadgroup works by a suffix xdist adds to each grouped test's id. pytest 9.2 moved the id where
    xdist 3.8 cannot set it: every shared run was then made once per worker, and nothing said so."""
    if not request.config.getvalue("loadgroup"):
        pytest.skip("not under xdist's --dist loadgroup (make test runs so)")
    assert request.node.nodeid.endswith("@made_once_per_session"), (
        f"{request.node.nodeid}: xdist's loadgroup did not take; install the pytest and pytest-xdist versions "
        "that pyproject.toml's dev extra allows (make install)"
    )
