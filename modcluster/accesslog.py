"""
The access log (one line per proxied request) and the rate limiter of
per-request warnings.

 - L{escape}/L{text}: bytes from a client (target, User-Agent, Referer) made
   safe for a log line, as httpd's access log escapes them: C{"} and C{\\}
   with a backslash, control characters and non-ASCII bytes as C{\\xhh}; so
   no CR/LF or quote from a client ever ends a line or a field.
 - L{AccessLine}: formats lines in the C{combined}, C{extended} (combined +
   duration, upstream time, node, context, failovers) or C{json} format.  The
   time stamp is formatted once per second, the User-Agent/Referer lookup is
   remembered for a repeated header list.
 - L{LogFile}: the sink.  Lines are buffered and written with one C{write}
   per 64 KiB or per second (L{LogFile.flush}, called by the proxy's sweep),
   to a file opened with C{O_APPEND} (several worker processes can share it:
   each write is whole lines) or to standard output (C{-}).
   L{LogFile.reopen} closes and opens the file again, for log rotation
   (SIGUSR1, through the balancer service's reopen hooks).
 - L{LogLimiter}: lets at most N lines per key through per interval and
   reports how many it held back, so a client cannot flood the log with
   per-request warnings (every 503, 404, failover).

See docs/access-log.md.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Callable, Optional

from json.encoder import encode_basestring_ascii as _quote

from twisted.logger import Logger, LogLevel

from modcluster.ratelimit import RateLimit

__all__ = [
    "FORMATS",
    "AccessLine",
    "LogFile",
    "LogLimiter",
    "escape",
    "text",
]

log = Logger(namespace="modcluster.accesslog")

#: Access log formats (C{proxy.access_log_format}).
FORMATS = ("combined", "extended", "json")

_UNSAFE = re.compile(rb'[^\x20-\x7e]|["\\]')
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct",
           b"Nov", b"Dec")
_VERSIONS = {"1.1": b"HTTP/1.1", "1.0": b"HTTP/1.0", "2.0": b"HTTP/2.0"}
_USER_AGENT = b"user-agent"
_REFERER = b"referer"
_DASH = b"-"


def _escape_one(m: re.Match) -> bytes:
    c = m[0]
    if c == b'"':
        return b'\\"'
    if c == b"\\":
        return b"\\\\"
    return b"\\x%02x" % c[0]


def escape(value: bytes) -> bytes:
    """C{value} with C{"}, C{\\}, control and non-ASCII bytes escaped (httpd's way)."""
    if _UNSAFE.search(value) is None:
        return value
    return _UNSAFE.sub(_escape_one, value)


def text(value) -> str:
    """A client-supplied value (bytes or str) for a log event field: escaped ASCII text."""
    if value.__class__ is str:
        value = value.encode("utf-8", "surrogateescape")
    elif not isinstance(value, bytes):
        return str(value)
    return escape(value).decode("ascii")


def _json_text(value: bytes) -> str:
    # valid UTF-8 stays as it is; other bytes as \xhh text; json.dumps escapes
    # quotes and control characters
    return value.decode("utf-8", "backslashreplace")


class AccessLine:
    """
    Formats access log lines.

    @param fmt: one of L{FORMATS}.
    """

    def __init__(self, fmt: str = "combined") -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown access log format {fmt!r}")
        self.fmt = fmt
        self._second = -1
        self._stamp = b""
        self._headers: Optional[tuple] = None
        self._agent_referer = (_DASH, _DASH)
        self._agent_referer_escaped = b'"-" "-"'
        # the last client address and request line, formatted: a keep-alive
        # connection repeats them (remembered heads share their bytes objects)
        self._client: Optional[str] = None
        self._client_bytes = _DASH
        self._request_key: tuple[Optional[bytes], Optional[bytes], Optional[str]] = (
            None, None, None)
        self._request = _DASH
        self._json_second = -1
        self._json_stamp = ""

    def _time(self, now: float) -> bytes:
        second = int(now)
        if second != self._second:
            t = time.gmtime(second)
            self._stamp = b"%02d/%s/%04d:%02d:%02d:%02d +0000" % (
                t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)
            self._second = second
        return self._stamp

    def _agent(self, headers) -> tuple:
        if headers is self._headers:
            return self._agent_referer
        self._headers = None
        agent = referer = _DASH
        for name, value in headers:
            n = len(name)
            if n == 10:
                if name.lower() == _USER_AGENT:
                    agent = value
            elif n == 7 and name.lower() == _REFERER:
                referer = value
        result = (agent, referer)
        self._agent_referer_escaped = b'"%s" "%s"' % (escape(referer), escape(agent))
        self._agent_referer = result
        if headers.__class__ is tuple:  # shared by remembered heads: worth keeping
            self._headers = headers
        return result

    def format(self, now: float, client: str, method: bytes, target: bytes, version: str,
               status: int, size: int, headers, duration: float, upstream: float,
               node: str, context: str, failovers: int) -> bytes:
        """
        One line (with its newline).  C{upstream} < 0: no node answered;
        C{node}/C{context} empty: none was chosen.
        """
        agent, referer = self._agent(headers)
        if self.fmt == "json":
            return self._json(now, client, method, target, version, status, size, agent,
                              referer, duration, upstream, node, context, failovers)
        key = self._request_key
        if target is key[1] and method is key[0] and version is key[2]:
            request = self._request
        else:
            if method:
                request = b"%s %s %s" % (method, escape(target),
                                         _VERSIONS.get(version, b"HTTP/1.1"))
            else:
                request = _DASH
            self._request_key = (method, target, version)
            self._request = request
        if client is not self._client:
            self._client = client
            self._client_bytes = client.encode("ascii", "backslashreplace")
        second = int(now)
        line = b'%s - - [%s] "%s" %d %s %s' % (
            self._client_bytes,
            self._stamp if second == self._second else self._time(now), request, status,
            b"%d" % size if size else _DASH, self._agent_referer_escaped)
        if self.fmt == "extended":
            line += b' %.6f %s %s "%s" %d\n' % (
                duration, b"%.6f" % upstream if upstream >= 0 else _DASH,
                escape(node.encode("utf-8", "surrogateescape")) if node else _DASH,
                escape(context.encode("utf-8", "surrogateescape")) if context else _DASH,
                failovers)
            return line
        return line + b"\n"

    def _json(self, now, client, method, target, version, status, size, agent, referer,
              duration, upstream, node, context, failovers) -> bytes:
        second = int(now)
        if second != self._json_second:
            self._json_second = second
            self._json_stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        if method:
            request = '"method":%s,"target":%s,"protocol":"%s"' % (
                _quote(_json_text(method)), _quote(_json_text(target)),
                _VERSIONS.get(version, b"HTTP/1.1").decode())
        else:
            request = '"method":null,"target":null,"protocol":null'
        line = (
            '{"time":"%s.%03dZ","client":%s,%s,"status":%d,"bytes":%d,"duration":%s,'
            '"upstream_time":%s,"node":%s,"context":%s,"failovers":%d,"referer":%s,'
            '"user_agent":%s}\n' % (
                self._json_stamp, int(now * 1000) % 1000, _quote(client), request, status,
                size, repr(round(duration, 6)),
                repr(round(upstream, 6)) if upstream >= 0 else "null",
                _quote(node) if node else "null", _quote(context) if context else "null",
                failovers,
                _quote(_json_text(referer)) if referer is not _DASH else "null",
                _quote(_json_text(agent)) if agent is not _DASH else "null"))
        return line.encode("ascii")


class LogFile:
    """
    A buffered, reopenable sink of log lines.

    @param path: a file name, or C{-} for standard output.
    @param limit: buffered bytes that trigger a write.
    @param send: with C{path} C{-} in a worker process: called with the
        buffered text instead of writing to standard output (the control
        process writes it: a worker's standard output is a pipe to it).
    """

    def __init__(self, path: str, limit: int = 65536,
                 send: Optional[Callable[[str], None]] = None) -> None:
        self.path = path
        self.limit = limit
        self._send = send
        self._buffer: list = []
        self._size = 0
        self._fd: Optional[int] = None
        self._failed = False
        self.dropped = 0
        self.open()

    def open(self) -> None:
        """Open the file (raises C{OSError} when it cannot be)."""
        if self.path == "-" or self._send is not None:
            self._fd = None
            return
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                           0o640)

    def write(self, line: bytes) -> None:
        """Add one line (with its newline)."""
        self._buffer.append(line)
        self._size += len(line)
        if self._size >= self.limit:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered, in one write (as far as the system takes it)."""
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer = []
        self._size = 0
        if self._send is not None:
            self._send(data.decode("ascii", "backslashreplace"))
            return
        fd = self._fd
        if fd is None:
            fd = sys.stdout.fileno() if self.path == "-" else None
            if fd is None:
                self.dropped += data.count(b"\n")
                return
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            self._failed = False
        except OSError as e:
            self.dropped += data.count(b"\n")
            if not self._failed:  # once until a write works again
                self._failed = True
                log.error("access log {path}: cannot write ({error}); lines are dropped",
                          path=self.path, error=str(e))

    def reopen(self) -> None:
        """Flush, close and open the file again (after a rename by log rotation)."""
        self.flush()
        if self.path == "-" or self._send is not None:
            return
        old = self._fd
        try:
            self.open()
        except OSError as e:
            log.error("access log {path}: cannot reopen ({error}); keeping the old file",
                      path=self.path, error=str(e))
            self._fd = old
            return
        if old is not None:
            os.close(old)

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LogLimiter:
    """
    Per-request log lines, rate-limited (L{RateLimit}): at most C{burst}
    events per key per C{interval} seconds are emitted; the rest are counted
    and reported in one line per key when its interval is over (L{tick}, or
    the key's next event).  Beyond 1000 keys at once, new ones share the key
    C{"other"}.

    @param clock: returns the current time (the proxy's coarse clock).
    """

    #: Keys with a window open at most (the others count as C{"other"}).
    max_keys = 1000

    def __init__(self, logger: Logger, clock: Callable[[], float], burst: int = 10,
                 interval: float = 10.0) -> None:
        self._log = logger
        self._clock = clock
        self._limit: RateLimit[object] = RateLimit(interval, burst)

    @property
    def burst(self) -> int:
        return self._limit.per_key

    @property
    def interval(self) -> float:
        return self._limit.interval

    def emit(self, key, level: LogLevel, format: str, **fields) -> bool:
        """Emit the event unless C{key} used up its share; C{True} if emitted."""
        now = self._clock()
        limit = self._limit
        if limit.due(now):
            self.tick(now)
        if key not in limit and len(limit) >= self.max_keys:
            key = "other"
        if limit.admit(key, now) is None:
            return False
        self._log.emit(level, format, **fields)
        return True

    def tick(self, now: float) -> None:
        """One line per key whose interval is over and that held events back."""
        for key, held, start in self._limit.expire(now):
            self._log.warn("{held} more similar messages ({key}) suppressed in the last "
                           "{interval:g} s", held=held, key=str(key), interval=now - start)


def path_problem(path: Optional[str]) -> Optional[str]:
    """
    Why the access log C{path} could not be opened for appending (C{None}: it
    can, or it is unset or C{-}); checked without creating anything, for
    C{--check} and before start-up.
    """
    if not path or path == "-":
        return None
    if os.path.isdir(path):
        return f"proxy.access_log: {path!r} is a directory"
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            return f"proxy.access_log: {path!r} is not writable"
        return None
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        return f"proxy.access_log: directory {directory!r} does not exist"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"proxy.access_log: cannot create {path!r} (directory not writable)"
    return None
