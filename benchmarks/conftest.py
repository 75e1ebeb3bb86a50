"""pytest-benchmark route: choose the suite and plugins, and parametrize one test per pair."""

from __future__ import annotations

import pytest

from attnbench.plugins.registry import load_registry
from attnbench.sweep.suite import Case, Suite, load_suite


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("attnbench")
    group.addoption("--attnbench-suite", default="smoke", help="suite name in suites/ or a TOML path (default: smoke)")
    group.addoption("--attnbench-plugin", action="append", default=[], help="plugin file to load (repeatable)")


def _suite(config: pytest.Config) -> Suite:
    registry = load_registry(config.getoption("--attnbench-plugin"))
    return load_suite(config.getoption("--attnbench-suite"), registry.names())


def _id(pair: tuple[Case, str]) -> str:
    case, impl = pair
    return f"{impl}-{case.label().replace(' ', '-')}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "pair" in metafunc.fixturenames:
        suite = _suite(metafunc.config)
        pairs = suite.pairs(load_registry().names())
        metafunc.parametrize("pair", pairs, ids=[_id(p) for p in pairs])


@pytest.fixture(scope="session")
def suite(request: pytest.FixtureRequest) -> Suite:
    return _suite(request.config)
