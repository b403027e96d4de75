from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import blocking

pytest_plugins = ["tests.lab.fixtures", "tests.nameserver", "tests.postgres"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "allow_blocking: this test may call blocking functions on an event loop's thread "
        "(tests/blocking.py says which are refused otherwise)",
    )


@pytest.fixture(autouse=True)
def no_blocking_calls(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Every unit test fails on a blocking call on its event loop's thread (tests/blocking.py).
    Lab tests run the real programs in their own processes and drive the lab synchronously,
    and a test marked allow_blocking opts out."""
    node = request.node
    if node.get_closest_marker("lab") or node.get_closest_marker("allow_blocking"):
        yield
        return
    yield from blocking.guarded(monkeypatch)
