"""Waiting in integration tests on the real reactor, and counting descriptors."""

from __future__ import annotations

import os
import time
from typing import Callable

from twisted.internet import task


async def until(predicate: Callable[[], object], timeout: float = 20.0,
                step: float = 0.02) -> None:
    """Let the reactor run until C{predicate()} is true; AssertionError after C{timeout} s."""
    from twisted.internet import reactor

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await task.deferLater(reactor, step, lambda: None)


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))
