"""Fixtures for the console tests (helpers live in console_helpers.py)."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock

from tests.support.console_helpers import console_client, two_nodes
from modcluster.cluster.registry import Registry


@pytest.fixture
def clock() -> Clock:
    c = Clock()
    c.advance(1_000_000)
    return c


@pytest.fixture
def registry(clock) -> Registry:
    return two_nodes(clock)


@pytest.fixture
def make_client(registry, clock):
    """C{make_client(**ConsoleConfig fields, console_kw={...})} → (Client, ConsoleResource)."""

    def make(console_kw=None, **config):
        return console_client(registry, clock, console_kw, **config)

    return make


@pytest.fixture
def client(make_client):
    return make_client()[0]
