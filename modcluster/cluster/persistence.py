"""
Saving and restoring the registry (PersistSlots).

The state is written atomically (temporary file in the same directory, fsync,
rename) shortly after each structural change: several changes in a burst (a
node registering ten contexts) cause one write.  Load changes are not written;
restored nodes keep their last saved load and stay "unverified" until their
next STATUS or PING.
"""

from __future__ import annotations

import json
import os
import tempfile

from twisted.application.service import Service
from twisted.logger import Logger

__all__ = ["StateStore", "read_state", "write_state"]


def write_state(path: str, state: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".txmodcluster-state-", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f, separators=(",", ":"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_state(path: str):
    """The saved state, or C{None} when there is no file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return None


class StateStore(Service):
    """
    Restores the registry when started and saves it after changes.

    @param delay: seconds to wait after a change before writing.
    """

    log = Logger()

    def __init__(self, registry, path: str, reactor, delay: float = 0.2) -> None:
        self._registry = registry
        self._path = path
        self._reactor = reactor
        self._delay = delay
        self._pending = None
        registry.on_structure_change(self._changed)

    def restore(self) -> None:
        """Load the saved state (called before the listeners start)."""
        try:
            state = read_state(self._path)
        except (OSError, ValueError) as e:
            # A damaged file must not stop the balancer: nodes re-register anyway.
            self.log.error("cannot read saved state {path}: {error}; starting empty",
                           path=self._path, error=e)
            self._quarantine()
            return
        if state is None:
            self.log.info("no saved state at {path}; starting empty", path=self._path)
            return
        try:
            count = self._registry.restore(state)
        except (KeyError, TypeError, ValueError) as e:
            self.log.error("saved state {path} is not usable ({error}); starting empty",
                           path=self._path, error=e)
            self._quarantine()
            return
        self.log.info("restored {count} nodes from {path}", count=count, path=self._path)

    def _quarantine(self) -> None:
        try:
            os.replace(self._path, self._path + ".bad")
            self.log.warn("moved the unusable state file to {bad}", bad=self._path + ".bad")
        except OSError:
            pass

    def _changed(self) -> None:
        if self._pending is None or not self._pending.active():
            self._pending = self._reactor.callLater(self._delay, self.save)

    def save(self) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        try:
            write_state(self._path, self._registry.to_state())
        except OSError as e:
            self.log.error("cannot save state to {path}: {error}", path=self._path, error=e)

    def stopService(self):
        super().stopService()
        self.save()
