"""
The session ids the proxy has seen (C{manager.max_session_ids} > 0), for the
console's session list and per-node counts and for C{/api/v1/sessions}, as
mod_cluster-manager shows its C{SessionIDs} table.

A request whose sticky session id the balancer found records (id, node route,
time) with the proxy's coarse clock.  The table is bounded: when it holds
C{max_ids} ids the one seen longest ago is dropped for the new one; ids not
seen for C{timeout} seconds (30 minutes, the servlet default session timeout)
are dropped when the table is read.  With worker processes each worker keeps
its own table and sends what changed to the control process once a second,
which merges them (L{SessionTable.merge}).
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["SESSION_TIMEOUT", "SessionTable"]

#: Seconds after which a session id not seen again is dropped.
SESSION_TIMEOUT = 1800.0


class SessionTable:
    """
    @param max_ids: at most this many ids (the least recently seen go first).
    @param track_changes: remember what changed since L{changes} (workers).
    """

    def __init__(self, max_ids: int, timeout: float = SESSION_TIMEOUT,
                 track_changes: bool = False) -> None:
        self.max_ids = max_ids
        self.timeout = timeout
        #: session id -> [route, last seen], least recently seen first
        self._ids: OrderedDict[str, list] = OrderedDict()
        self._changed: dict[str, list] | None = {} if track_changes else None

    def __len__(self) -> int:
        return len(self._ids)

    def seen(self, session_id: str, route: str, now: float) -> None:
        """A request with C{session_id} went to the node C{route} at C{now}."""
        ids = self._ids
        entry = ids.get(session_id)
        if entry is not None:
            if entry[1] == now and entry[0] == route:
                return  # already seen in this second
            entry[0] = route
            entry[1] = now
            ids.move_to_end(session_id)
        else:
            if len(ids) >= self.max_ids:
                ids.popitem(last=False)
            entry = ids[session_id] = [route, now]
        changed = self._changed
        if changed is not None:
            changed[session_id] = entry

    def expire(self, now: float) -> None:
        """Drop the ids not seen for C{timeout} seconds."""
        ids = self._ids
        limit = now - self.timeout
        while ids:
            sid, entry = next(iter(ids.items()))
            if entry[1] >= limit:
                break
            del ids[sid]

    def entries(self, now: float) -> list[tuple[str, str, float]]:
        """C{(session id, route, last seen)}, least recently seen first."""
        self.expire(now)
        return [(sid, e[0], e[1]) for sid, e in self._ids.items()]

    def changes(self) -> list[list]:
        """What changed since the last call, as C{[[id, route, time], ...]} (JSON-able)."""
        changed = self._changed or {}
        out = [[sid, e[0], e[1]] for sid, e in changed.items()]
        if self._changed is not None:
            self._changed = {}
        return out

    def merge(self, entries) -> None:
        """Take a worker's L{changes}."""
        for sid, route, when in entries:
            sid = str(sid)
            when = float(when)
            entry = self._ids.get(sid)
            if entry is not None and entry[1] > when:
                continue
            self.seen(sid, str(route), when)
