"""
Listening sockets shared by the data-plane worker processes (C{proxy.workers} > 1).

The control process binds, for every C{proxy.listen} endpoint, one socket per
worker with C{SO_REUSEPORT} on one address (L{bind_shared}); each worker adopts
its inherited socket where it would have listened (L{Adopter}), wrapped in TLS
for C{ssl:} as C{listenSSL} would.  L{modcluster.proxy.workers} starts the
workers and hands them the sockets.
"""

from __future__ import annotations

import socket
from typing import Optional

import attrs
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from modcluster.listening import with_backlog

__all__ = ["Adopter", "AddressRecorder", "SharedListener", "bind_shared"]

log = Logger(namespace="modcluster.workers")


@attrs.frozen
class SharedListener:
    """One C{proxy.listen} endpoint bound once per worker."""

    description: str
    kind: str
    family: int
    host: str
    port: int
    sockets: tuple


class AddressRecorder:
    """
    Stands in for the reactor when a server endpoint description is parsed, to
    learn the address, port and backlog it would listen on.
    """

    def __init__(self) -> None:
        self.args: Optional[tuple] = None

    def listenTCP(self, port, factory, backlog=50, interface=""):
        self.args = ("tcp", port, backlog, interface)

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):
        self.args = ("ssl", port, backlog, interface)


def bind_shared(description: str, count: int, reactor=None,
                backlog: Optional[int] = None) -> SharedListener:
    """
    Bind C{count} listening sockets with C{SO_REUSEPORT} on the address of the
    server endpoint C{description} (C{tcp:}, C{tcp6:} or C{ssl:}; port 0 picks
    one free port for all of them).  For C{ssl:} the certificate is loaded here
    too, so a bad one fails the start of the control process.  Each socket
    listens with the description's C{backlog=}, else C{backlog} (else
    Twisted's default).
    """
    from modcluster.config import WORKER_LISTENER_KINDS

    if description.split(":", 1)[0] not in WORKER_LISTENER_KINDS:
        raise ValueError(f"{description!r}: cannot be shared by worker processes")
    recorder = AddressRecorder()
    parsed = description if backlog is None else with_backlog(description, backlog)
    serverFromString(recorder, parsed).listen(None).addErrback(lambda _: None)
    if recorder.args is None:
        raise ValueError(f"{description!r}: cannot be shared by worker processes")
    kind, port, backlog, interface = recorder.args
    family = socket.AF_INET6 if ":" in interface else socket.AF_INET
    host = interface or "0.0.0.0"
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
            port = s.getsockname()[1]
            s.listen(backlog)
            s.setblocking(False)
    except OSError:
        for s in sockets:
            s.close()
        raise
    return SharedListener(description, kind, family, host, port, tuple(sockets))


class Adopter:
    """
    Stands in for the reactor when a worker "listens" on an endpoint
    description: it adopts the inherited socket instead (wrapped in TLS for
    C{ssl:}, as C{listenSSL} would).
    """

    def __init__(self, reactor, fd: int, family: int, description: Optional[str] = None,
                 fast_accept: bool = False) -> None:
        self._reactor = reactor
        self._fd = fd
        self._family = family
        self._description = description  # (certificates re-read on reload)
        self._fast_accept = fast_accept

    def listenTCP(self, port, factory, backlog=50, interface=""):
        adopted = self._reactor.adoptStreamPort(self._fd, self._family, factory)
        if self._fast_accept:
            from modcluster.proxy.accept import install_logged

            install_logged(adopted)
        return adopted

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):
        from modcluster.tls import answer_alpn, resume_sessions

        from modcluster.proxy.alpn import NegotiatingFactory, alpn_protocols

        config = getattr(getattr(factory, "wrapped", factory), "config", None)
        if getattr(config, "tls_engine", "twisted") == "stdlib":
            from modcluster.tls import SERVER_ALPN_PROTOCOLS

            from modcluster.proxy.stdtls import UnsupportedOptions, listener_factory

            protocols = (alpn_protocols(config) if isinstance(factory, NegotiatingFactory)
                         else SERVER_ALPN_PROTOCOLS)
            try:
                tls = listener_factory(contextFactory, protocols, factory, self._reactor,
                                       self._description)
            except UnsupportedOptions as e:
                log.warn("{listener}: Twisted's TLS engine, the stdlib one cannot do {why}",
                         listener=self._description, why=str(e))
            else:
                adopted = self._reactor.adoptStreamPort(self._fd, self._family, tls)
                if self._fast_accept:
                    from modcluster.proxy.accept import install_logged

                    install_logged(adopted)
                return adopted
        resume_sessions(contextFactory)  # session tickets: before the context is built

        # select http/1.1 (and h2 first with [proxy] http2), never abort on an ALPN offer
        if isinstance(factory, NegotiatingFactory):
            answer_alpn(contextFactory, alpn_protocols(factory.wrapped.config))
        else:
            answer_alpn(contextFactory)
        return self._reactor.adoptStreamPort(
            self._fd, self._family, TLSMemoryBIOFactory(contextFactory, False, factory))
