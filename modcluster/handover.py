"""
Hitless restart: a new balancer process takes the listening sockets and the
registrations over from the running one, which then drains and exits.

With C{manager.handover_socket} set, every balancer listens on that Unix
socket.  A balancer starting with the same setting first connects to it
(L{take_over}); when a balancer answers:

 1. the running (old) process stops accepting on all its listeners, without
    closing them: new connections wait in the kernel's accept queues;
 2. it sends the listening sockets (file descriptors, C{SCM_RIGHTS}) and a
    snapshot of its registry;
 3. the new process restores the registry, adopts the sockets for the
    listeners of its own configuration with the same address (binding the
    others), starts, and says C{ready};
 4. the old process stops its handover listener, closes the connection, and
    stops as on SIGTERM: its requests in flight finish (C{proxy.drain_timeout}),
    idle connections are closed;
 5. the new process binds the handover socket itself, ready for the next
    upgrade.

The sockets are the same kernel objects in both processes, so no connection
waiting in an accept queue is lost (which closing one of two C{SO_REUSEPORT}
sockets would do).  If the new process dies before C{ready}, the old one
accepts again.  Worker processes (C{proxy.workers} > 1) receive the old
process's worker sockets the same way.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any, Optional, cast

from twisted.application.service import Service
from twisted.internet.interfaces import ISystemHandle, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.tls import TLSMemoryBIOFactory

__all__ = ["HandoverService", "ListenerBook", "Takeover", "take_over"]

log = Logger(namespace="modcluster.handover")

#: Most file descriptors one handover passes.
MAX_FDS = 250


#: the longest line a handover peer may send (its request, "ready")
MAX_LINE = 64 * 1024
#: seconds the running balancer waits for a successor to take the sockets and state
SEND_TIMEOUT = 10.0

def peer_uid(sock) -> Optional[int]:
    """
    The user id of the process at the other end of the Unix socket C{sock}
    (C{SO_PEERCRED}), or C{None} where the system does not say.
    """
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    return struct.unpack("3i", creds)[1]


def _foreign(uid: Optional[int]) -> bool:
    """A peer of another user than this process's (root counts as ours)."""
    return uid is not None and uid != os.getuid() and uid != 0


def _key(host: str, port: int) -> tuple[str, int]:
    return (host or "0.0.0.0", int(port))


class Takeover:
    """
    What the new process received from the old one (L{take_over}).

    @ivar sockets: C{(host, port) -> [(fd, family), ...]}, unused ones still open.
    @ivar state: the old registry's L{Registry.to_state} snapshot.
    """

    def __init__(self, sock: socket.socket, sockets: dict, state: dict, pid: int) -> None:
        self._sock = sock
        self.sockets = sockets
        self.state = state
        self.pid = pid

    def pop(self, host: str, port: int) -> list[tuple[int, int]]:
        """The handed sockets listening on C{host:port} (now owned by the caller)."""
        return self.sockets.pop(_key(host, port), [])

    def finish(self, timeout: float = 10.0) -> None:
        """
        Tell the old process we serve; wait until it released the handover
        socket; close the sockets no listener of ours took.
        """
        for entries in self.sockets.values():
            for fd, _ in entries:
                os.close(fd)
        self.sockets.clear()
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(b"ready\n")
            while self._sock.recv(4096):
                pass
        except OSError as e:
            log.warn("handover: no goodbye from process {pid}: {error}", pid=self.pid, error=e)
        finally:
            self._sock.close()


def take_over(path: str, timeout: float = 10.0) -> Optional[Takeover]:
    """
    Ask the balancer listening on C{path} for its sockets and registrations.
    C{None} when no balancer answers there (a stale socket file is removed).
    Blocking: called before the reactor runs.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        sock.close()
        if isinstance(e, ConnectionRefusedError):
            try:
                os.unlink(path)
            except OSError:
                pass
        return None
    uid = peer_uid(sock)
    if _foreign(uid):
        # not a balancer of ours: its state would name the nodes we forward
        # to, its sockets would be our listeners
        sock.close()
        raise PermissionError(f"the process listening there runs as uid {uid}, not as this "
                              f"user (uid {os.getuid()}) or root: not taking over from it")
    try:
        sock.sendall(json.dumps({"takeover": True, "pid": os.getpid()}).encode() + b"\n")
        head, fds, _, _ = socket.recv_fds(sock, 1 << 16, MAX_FDS)
        buffer = bytearray(head)
        while b"\n" not in buffer:
            chunk = sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("the running balancer closed the handover")
            buffer += chunk
        line, _, rest = bytes(buffer).partition(b"\n")
        header = json.loads(line)
        state_bytes = bytearray(rest)
        while len(state_bytes) < header["state_length"]:
            chunk = sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("the running balancer closed the handover")
            state_bytes += chunk
        state = json.loads(bytes(state_bytes[:header["state_length"]]))
    except Exception:
        sock.close()
        raise
    sockets: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for fd, entry in zip(fds, header["listeners"]):
        sockets.setdefault(_key(entry["host"], entry["port"]), []).append(
            (fd, entry["family"]))
    for fd in fds[len(header["listeners"]):]:
        os.close(fd)
    return Takeover(sock, sockets, state, header["pid"])


class ListenerBook:
    """
    Stands between the listeners being started and the reactor (installed
    on the reactor instance for the start only): records every listening
    port, and adopts a handed-over socket instead of binding when one
    listens on the same address.
    """

    def __init__(self, reactor, takeover: Optional[Takeover] = None) -> None:
        self.reactor = reactor
        self.takeover = takeover
        self.ports: list = []
        self._installed = False

    def install(self) -> None:
        if not self._installed:
            self._real = (self.reactor.listenTCP, self.reactor.listenSSL)
            self.reactor.listenTCP = self.listenTCP
            self.reactor.listenSSL = self.listenSSL
            self._installed = True

    def uninstall(self) -> None:
        if self._installed:
            del self.reactor.listenTCP
            del self.reactor.listenSSL
            self._installed = False

    def _handed(self, port: int, interface: str) -> list[tuple[int, int]]:
        if self.takeover is None or not port:
            return []
        return self.takeover.pop(interface, port)

    def _adopt(self, handed: list[tuple[int, int]], port: int, interface: str,
               factory) -> Optional[Any]:
        first = None
        for fd, family in handed:
            adopted = self.reactor.adoptStreamPort(fd, family, factory)
            os.close(fd)  # adoptStreamPort took its own copy
            self.ports.append(adopted)
            first = first or adopted
        if first is not None:
            log.info("handover: took over the listener on {interface}:{port}",
                     interface=interface or "*", port=port)
        return first

    def listenTCP(self, port, factory, backlog=50, interface=""):
        handed = self._handed(port, interface)
        if handed:
            return self._adopt(handed, port, interface, factory)
        listening = self._real[0](port, factory, backlog=backlog, interface=interface)
        self.ports.append(listening)
        return listening

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):
        handed = self._handed(port, interface)
        if handed:
            return self._adopt(handed, port, interface,
                               TLSMemoryBIOFactory(contextFactory, False, factory))
        listening = self._real[1](port, factory, contextFactory, backlog=backlog,
                                  interface=interface)
        self.ports.append(listening)
        return listening

    def listening(self) -> list:
        """The recorded ports still open."""
        return [p for p in self.ports if getattr(p, "connected", False)]


class _HandoverProtocol(Protocol):
    # A UNIX socket connection (twisted's unix.Server is a tcp.Server).
    transport: Optional[ITCPTransport]

    def __init__(self, service: "HandoverService") -> None:
        self.service = service
        self.buffer = b""
        #: The successor's process id, once this connection took the handover
        #: (C{None} while it asks, or when it was refused).
        self.pid: Optional[int] = None
        self.paused: list = []
        self.handed = False
        self.done = False
        #: the peer runs as another user (connectionMade): refused
        self.foreign = False

    def connectionMade(self) -> None:
        # (the socket is made 0600, but only once bound: a process of another
        # user may have connected in between)
        handle = getattr(self.transport, "getHandle", None)
        uid = peer_uid(handle()) if handle is not None else None
        if _foreign(uid):
            log.warn("handover: a process of uid {uid} connected to the handover socket; "
                     "closing", uid=uid)
            self.foreign = True  # nothing it sends is read
            assert self.transport is not None
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        if self.foreign:
            return
        self.buffer += data
        if len(self.buffer) > MAX_LINE:  # a request or "ready" is one short line
            log.warn("handover: a line of over {limit} bytes on the handover socket; "
                     "closing", limit=MAX_LINE)
            self.buffer = b""
            assert self.transport is not None
            self.transport.loseConnection()
            return
        while b"\n" in self.buffer:
            line, _, self.buffer = self.buffer.partition(b"\n")
            if not self.handed:
                self.handed = True
                self.service.hand_over(self, line)
            elif line.strip() == b"ready":
                self.done = True
                self.service.handed_over(self)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.handed and not self.done and self.pid is not None:
            self.service.failed(self)


class HandoverService(Service):
    """
    Both ends of a handover in a balancer: finishes the takeover this
    process started (if any), then listens on C{path} for a successor.

    @param top: the L{modcluster.lifecycle.BalancerService} (registry, book).
    """

    def __init__(self, reactor, path: str, top, book: ListenerBook,
                 takeover: Optional[Takeover] = None) -> None:
        self.reactor = reactor
        self.path = path
        self.top = top
        self.book = book
        self.takeover = takeover
        self.port = None
        self.busy = False

    def startService(self) -> None:
        super().startService()
        if self.takeover is not None:
            self.takeover.finish()
            log.info("handover: took over from process {pid}; it now drains and exits",
                     pid=self.takeover.pid)
            self.takeover = None
        if os.path.exists(self.path):
            os.unlink(self.path)  # stale (the checks in take_over found nobody there)
        factory = Factory.forProtocol(lambda: _HandoverProtocol(self))
        factory.noisy = False
        self.port = self.reactor.listenUNIX(self.path, factory, mode=0o600)

    def stopService(self):
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None

    # -- the old process --------------------------------------------------------

    def _configured(self) -> set:
        """The C{(host, port)} of the configured listeners with a fixed port."""
        from modcluster.preflight import split_endpoint

        c = self.top.config
        found = set()
        for description in (*c.manager.listen, *c.proxy.listen, *c.console.listen):
            kind, positional, kw = split_endpoint(description)
            port = kw.get("port", positional[0] if positional else "0")
            if kind in ("tcp", "tcp6", "ssl") and port.isdigit() and int(port):
                found.add(_key(kw.get("interface", "") or ("::" if kind == "tcp6" else ""),
                               int(port)))
        return found

    def _ports(self) -> list:
        """Our listening ports a successor can take (not ephemeral ones: demo nodes)."""
        configured = self._configured()
        return [p for p in self.book.listening()
                if _key(p.getHost().host, p.getHost().port) in configured]

    def _sockets(self) -> list[tuple[dict, int]]:
        entries = []
        for port in self._ports():
            host = port.getHost()
            entries.append(({"host": host.host, "port": host.port,
                             "family": port.addressFamily}, port.fileno()))
        from modcluster.proxy.workers import WorkerPool

        for service in self.top:
            if isinstance(service, WorkerPool):
                for listener in service.listeners:
                    for s in listener.sockets:
                        entries.append(({"host": listener.host, "port": listener.port,
                                         "family": listener.family}, s.fileno()))
        return entries[:MAX_FDS]

    def hand_over(self, proto: _HandoverProtocol, line: bytes) -> None:
        transport = proto.transport
        assert transport is not None
        try:
            request = json.loads(line)
            pid = int(request["pid"])
        except (ValueError, KeyError, TypeError):
            transport.loseConnection()
            return
        if self.busy or not request.get("takeover"):
            transport.loseConnection()
            return
        self.busy = True
        proto.pid = pid
        for port in self._ports():
            port.stopReading()
            # Closing must not shut the socket down: it is the new process's too.
            port._shouldShutdown = False
            proto.paused.append(port)
        saved = self.top.registry.to_state()
        state = json.dumps(saved, separators=(",", ":")).encode()
        entries = self._sockets()
        header = json.dumps({"pid": os.getpid(), "listeners": [e for e, _ in entries],
                             "state_length": len(state)}).encode() + b"\n"
        # The handle of a UNIX stream connection is its socket.
        handle = cast(socket.socket, ISystemHandle(transport).getHandle())
        try:
            # Blocking, but bounded: a successor that stops reading must not
            # hang this process (whose listeners are paused) for ever.
            handle.settimeout(SEND_TIMEOUT)
            socket.send_fds(handle, [header], [fd for _, fd in entries])
            handle.sendall(state)
            handle.setblocking(False)
        except OSError as e:
            log.error("handover to process {pid} failed: {error}", pid=pid, error=e)
            transport.abortConnection()
            return
        log.info("handover: process {pid} is taking over {count} listening sockets and "
                 "{nodes} nodes", pid=pid, count=len(entries),
                 nodes=len(saved.get("nodes", ())))

    def handed_over(self, proto: _HandoverProtocol) -> None:
        if proto.pid is None:
            # "ready" from a successor that was refused (it did not wait for the
            # sockets): it takes nothing over; its connection is being closed.
            return
        log.info("handover: process {pid} serves now; draining and stopping", pid=proto.pid)
        port, self.port = self.port, None

        def bye(_=None) -> None:
            if proto.transport is not None:
                proto.transport.loseConnection()
            self.reactor.callLater(0, self._stop_reactor)

        if port is None:
            bye()
        else:
            port.stopListening().addBoth(bye)

    def _stop_reactor(self) -> None:
        if self.reactor.running:
            self.reactor.stop()

    def failed(self, proto: _HandoverProtocol) -> None:
        self.busy = False
        for port in proto.paused:
            if getattr(port, "connected", False):
                port._shouldShutdown = True
                port.startReading()
        log.error("handover: process {pid} went away before serving; accepting again",
                  pid=proto.pid)
