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
import time

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


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 300 else text[:300] + "..."


class StateStore(Service):
    """
    Restores the registry when started and saves it after changes.

    @param restore: C{restore(state) -> node count}: loads a state read from the
        file into the empty registry with the checks MCMP applies, raising on
        anything MCMP would refuse (L{modcluster.mcmp.handler.MCMPHandler.restore_state}).
    @param delay: seconds to wait after a change before writing.
    """

    log = Logger()

    def __init__(self, registry, path: str, reactor, restore, delay: float = 0.2) -> None:
        self._registry = registry
        self._path = path
        self._reactor = reactor
        self._restore = restore
        self._delay = delay
        self._pending = None
        registry.on_structure_change(self._changed)

    def restore(self) -> None:
        """
        Load the saved state (called before the listeners start).  A state that
        cannot be read or restored never stops the balancer: the file is set
        aside (L{bad_path}), one error line says why, and the registry starts
        empty (nodes re-register on their next STATUS).
        """
        try:
            state = read_state(self._path)
        except Exception as e:  # OSError, bad UTF-8 or JSON, absurd nesting
            self._set_aside(f"cannot be read ({_reason(e)})")
            return
        if state is None and not os.path.lexists(self._path):  # (a file saying null is not)
            self.log.info("no saved state at {path}; starting empty", path=self._path)
            return
        try:
            count = self._restore(state)
        except Exception as e:
            self._registry.clear()
            self._set_aside(f"is not usable ({_reason(e)})")
            return
        self.log.info("restored {count} nodes from {path}", count=count, path=self._path)

    def bad_path(self) -> str:
        """
        Where an unusable state file goes: C{<name>.bad}, or, when an earlier
        one is there, C{<name>.bad.<UTC time>} (with C{-N} if even that exists).
        """
        bad = self._path + ".bad"
        if not os.path.lexists(bad):
            return bad
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._reactor.seconds()))
        bad = f"{self._path}.bad.{stamp}"
        n = 1
        while os.path.lexists(bad if n == 1 else f"{bad}-{n}"):
            n += 1
        return bad if n == 1 else f"{bad}-{n}"

    def _set_aside(self, why: str) -> None:
        bad = self.bad_path()
        try:
            os.replace(self._path, bad)
        except OSError as e:
            self.log.error("saved state {path} {why}; could not set it aside ({error}); "
                           "starting empty", path=self._path, why=why, error=e)
            return
        self.log.error("saved state {path} {why}; set aside as {bad}; starting empty",
                       path=self._path, why=why, bad=bad)

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
