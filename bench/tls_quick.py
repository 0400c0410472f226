#!/usr/bin/env python3
"""
In-memory comparison of the proxy's two TLS engines (proxy.tls_engine): the
server side of one keep-alive HTTPS connection, a 100 B response per request,
no sockets and no reactor.

  .venv/bin/python bench/tls_quick.py [--requests N] [--rounds R] [--handshakes N]
  .venv/bin/python bench/tls_quick.py --micro resumed|full|keepalive [--count N] [--calls]

--micro: the stdlib engine alone, deterministic enough for callgrind
(valgrind --tool=callgrind, instructions per iteration: run it with two
values of --count and take the difference): "resumed" is N TLS 1.2
connections resumed with a ticket through the listener chain tap.py builds
(stdtls factory, the ALPN NegotiatingFactory, a ProxyFactory), each:
accept (buildProtocol, makeConnection), ClientHello, the client's Finished,
then the client closes (connectionLost), no request (as openssl s_time -reuse);
"full" the same with full TLS 1.3 handshakes (as s_time -new);
"keepalive" is N requests on one connection (100 B answers, the TLS layer
with a protocol that answers at once).  The client's work is in the counts
too (the same for old and new code).  --calls prints Python function calls
(and C calls from Python) of the server side per iteration.

The client is a stdlib SSLObject on memory BIOs (the same for both engines);
only the server side is timed: C{dataReceived} of the TLS layer (decrypt, hand
the request to the application, which answers at once: encrypt, hand the
records to the TCP transport) and, for Twisted's TLSMemoryBIOProtocol, the
C{callLater(0)} that sends its aggregated writes (run with a Clock).  The TCP
transport is a StringTransport for both, so what Twisted's FileDescriptor
buffering adds over loopback (two more loop iterations per response) is NOT
in these numbers.  Prints µs per request, min of the rounds, alternating.
"""

from __future__ import annotations

import argparse
import os
import ssl
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import trustme  # noqa: E402
from twisted.internet.address import IPv4Address  # noqa: E402
from twisted.internet.protocol import Factory, Protocol  # noqa: E402
from twisted.internet.task import Clock  # noqa: E402
from twisted.internet.testing import StringTransport  # noqa: E402
from twisted.protocols.tls import TLSMemoryBIOFactory  # noqa: E402

from modcluster.proxy.stdtls import TLSServerFactory, description_context  # noqa: E402
from modcluster.tls import resume_sessions  # noqa: E402

REQUEST = (b"GET /small.txt HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
           b"User-Agent: wrk\r\nAccept: */*\r\n\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n"
            b"Date: Mon, 07 Dec 2026 06:00:00 GMT\r\n\r\n" + b"x" * 100)


class Answer(Protocol):
    def dataReceived(self, data):
        self.transport.write(RESPONSE)


class _Recorder:
    options = None

    def listenSSL(self, port, factory, contextFactory, backlog=50, interface=""):
        self.options = contextFactory


def twisted_factory(description, clock):
    from twisted.internet.endpoints import serverFromString

    from modcluster.tls import answer_alpn

    r = _Recorder()
    serverFromString(r, description).listen(None)
    resume_sessions(r.options)
    answer_alpn(r.options)
    return TLSMemoryBIOFactory(r.options, False, Factory.forProtocol(Answer), clock=clock)


def run(factory, clock, client_ctx, requests):
    tcp = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    conn = factory.buildProtocol(tcp.getPeer())
    conn.makeConnection(tcp)
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(cin, cout, server_hostname="localhost")
    for _ in range(10):
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        conn.dataReceived(cout.read())
        clock.advance(0)
        cin.write(tcp.value())
        tcp.clear()
    conn.dataReceived(cout.read())
    clock.advance(0)
    cin.write(tcp.value())
    tcp.clear()
    spent = 0.0
    perf = time.perf_counter
    for _ in range(requests):
        client.write(REQUEST)
        wire = cout.read()
        t0 = perf()
        conn.dataReceived(wire)
        if clock.calls:
            clock.advance(0)
        spent += perf() - t0
        cin.write(tcp.value())
        tcp.clear()
        got = client.read(65536)
        assert got == RESPONSE, got
    return spent / requests * 1e6


def handshake(factory, clock, client_ctx, session=None):
    """Server-side seconds of one handshake (client flights made outside the timing)."""
    tcp = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    perf = time.perf_counter
    t0 = perf()
    conn = factory.buildProtocol(tcp.getPeer())
    conn.makeConnection(tcp)
    spent = perf() - t0
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(cin, cout, server_hostname="localhost", session=session)
    for _ in range(10):
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        else:
            break
        wire = cout.read()
        t0 = perf()
        conn.dataReceived(wire)
        if clock.calls:
            clock.advance(0)
        spent += perf() - t0
        cin.write(tcp.value())
        tcp.clear()
    wire = cout.read()
    t0 = perf()
    if wire:
        conn.dataReceived(wire)
    if clock.calls:
        clock.advance(0)
    spent += perf() - t0
    return spent, client


def handshakes(engines, clock, client_ctx, count, resumed):
    out = {}
    for name, make in engines.items():
        factory = make()
        session = None
        if resumed:
            _, first = handshake(factory, clock, client_ctx)
            session = first.session
        total = 0.0
        for _ in range(count):
            spent, client = handshake(factory, clock, client_ctx, session)
            assert client.session_reused == bool(resumed)
            total += spent
        out[name] = total / count * 1e6
    return out


class _CloseTransport(StringTransport):
    """
    A StringTransport whose loseConnection/abortConnection end the connection
    as tcp.Server's connectionLost would: the producer and the protocol let go.
    """

    def loseConnection(self):
        if not self.disconnecting:
            super().loseConnection()
            self._lost()

    def abortConnection(self):
        if not self.disconnecting:
            super().abortConnection()
            self._lost()

    writes = 0

    def write(self, data):
        self.writes += 1
        super().write(data)

    def _lost(self):
        self.producer = None
        protocol = self.protocol
        del self.protocol
        protocol.connectionLost(_DONE)


_DONE = None


class _Counter:
    def __init__(self):
        self.calls = 0
        self.c_calls = 0

    def __call__(self, frame, event, arg):
        if event == "call":
            self.calls += 1
        elif event == "c_call":
            self.c_calls += 1


def micro(kind, count, calls, pem):
    """See the module docstring (--micro)."""
    global _DONE
    from twisted.internet.main import CONNECTION_DONE
    from twisted.internet.testing import MemoryReactorClock
    from twisted.python.failure import Failure

    from modcluster.config import ProxyConfig
    from modcluster.proxy import ProxyFactory
    from modcluster.proxy.alpn import NegotiatingFactory, alpn_protocols

    _DONE = Failure(CONNECTION_DONE)
    description = f"ssl:0:privateKey={pem}"
    clock = MemoryReactorClock()
    counter = _Counter() if calls else None
    on = (lambda: sys.setprofile(counter)) if calls else (lambda: None)
    off = (lambda: sys.setprofile(None)) if calls else (lambda: None)
    profile = None
    zero = None
    if os.environ.get("TLS_QUICK_CALLGRIND"):  # bench/cgtoggle.c: the server side only
        import ctypes

        lib = ctypes.CDLL(os.environ["TLS_QUICK_CALLGRIND"])
        on = off = lib.cg_toggle
        zero = lib.cg_zero
    elif os.environ.get("TLS_QUICK_PROFILE"):  # cProfile of the server side only
        import cProfile

        profile = cProfile.Profile()
        on, off = profile.enable, profile.disable
    if kind == "keepalive":
        factory = TLSServerFactory(description_context(description, (b"http/1.1",)),
                                   Factory.forProtocol(Answer), clock)
        client_ctx = ssl.create_default_context()
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
        tcp = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        conn = factory.buildProtocol(tcp.getPeer())
        conn.makeConnection(tcp)
        cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = client_ctx.wrap_bio(cin, cout, server_hostname="localhost")
        for _ in range(10):
            try:
                client.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            conn.dataReceived(cout.read())
            cin.write(tcp.value())
            tcp.clear()
        conn.dataReceived(cout.read())
        cin.write(tcp.value())
        tcp.clear()
        try:
            client.read(65536)  # the TLS 1.3 tickets
        except ssl.SSLWantReadError:
            pass
        t0 = time.perf_counter()
        spent = 0.0
        for _ in range(count):
            client.write(REQUEST)
            wire = cout.read()
            on()
            t1 = time.perf_counter()
            conn.dataReceived(wire)
            spent += time.perf_counter() - t1
            off()
            cin.write(tcp.value())
            tcp.clear()
            got = client.read(65536)
            assert got == RESPONSE, got
        total = time.perf_counter() - t0
    else:
        proxy = ProxyFactory(clock, ProxyConfig(), lambda: None, lambda *a: None,
                             lambda *a: None)
        factory = TLSServerFactory(
            description_context(description, alpn_protocols(proxy.config)),
            NegotiatingFactory(proxy), clock)
        client_ctx = ssl.create_default_context()
        client_ctx.check_hostname = False
        client_ctx.verify_mode = ssl.CERT_NONE
        if kind == "resumed":
            client_ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        session = None
        writes = 0
        spent = 0.0
        t0 = None
        for i in range(count + 1):
            on()
            t1 = time.perf_counter()
            tcp = _CloseTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
            conn = factory.buildProtocol(tcp.getPeer())
            tcp.protocol = conn
            conn.makeConnection(tcp)
            spent += time.perf_counter() - t1
            off()
            cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
            client = client_ctx.wrap_bio(cin, cout, server_hostname="localhost",
                                         session=session)
            for _ in range(10):
                try:
                    client.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    pass
                wire = cout.read()
                on()
                t1 = time.perf_counter()
                conn.dataReceived(wire)
                spent += time.perf_counter() - t1
                off()
                cin.write(tcp.value())
                tcp.clear()
            if session is not None:
                assert client.session_reused
            elif t0 is None:  # the first connection: not counted
                session = client.session if kind == "resumed" else None
                spent = 0.0
                if counter is not None:
                    counter.calls = counter.c_calls = 0
                if zero is not None:
                    zero()
                t0 = time.perf_counter()
            wire = cout.read()  # the client's Finished (TLS 1.2 resumed, TLS 1.3)
            on()
            t1 = time.perf_counter()
            if wire:
                conn.dataReceived(wire)
            tcp.disconnecting = True
            tcp._lost()  # the client closes (as s_time: no close_notify)
            spent += time.perf_counter() - t1
            off()
            writes += tcp.writes if i else 0
        total = time.perf_counter() - t0
    print(f"{kind}: {count} iterations, server side {spent / count * 1e6:.1f} µs each, "
          f"whole loop {total / count * 1e6:.1f} µs each"
          + (f", {writes / count:.2f} writes to TCP each" if kind != "keepalive" else ""))
    if profile is not None:
        import pstats

        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    if counter is not None:
        print(f"  Python calls {counter.calls / count:.1f}, C calls from Python "
              f"{counter.c_calls / count:.1f} per iteration (server side)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--handshakes", type=int, default=0,
                    help="also time N full (TLS 1.3) and N resumed (TLS 1.2 ticket) "
                         "handshakes per round, server side")
    ap.add_argument("--ecdsa", action="store_true",
                    help="an ECDSA P-256 certificate (default: RSA 2048, as bench/run.py)")
    ap.add_argument("--micro", choices=("resumed", "full", "keepalive"))
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--calls", action="store_true")
    args = ap.parse_args()
    if args.micro:
        key_type = trustme.KeyType.ECDSA if args.ecdsa else trustme.KeyType.RSA
        ca = trustme.CA(key_type=key_type)
        cert = ca.issue_cert("localhost", key_type=key_type)
        with tempfile.TemporaryDirectory() as d:
            pem = os.path.join(d, "server.pem")
            cert.private_key_and_cert_chain_pem.write_to_path(pem)
            micro(args.micro, args.count, args.calls, pem)
        return
    key_type = trustme.KeyType.ECDSA if args.ecdsa else trustme.KeyType.RSA
    ca = trustme.CA(key_type=key_type)
    cert = ca.issue_cert("localhost", key_type=key_type)
    with tempfile.TemporaryDirectory() as d:
        pem = os.path.join(d, "server.pem")
        cert.private_key_and_cert_chain_pem.write_to_path(pem)
        description = f"ssl:0:privateKey={pem}"
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        clock = Clock()
        engines = {
            "twisted": lambda: twisted_factory(description, clock),
            "stdlib": lambda: TLSServerFactory(
                description_context(description, (b"http/1.1",)),
                Factory.forProtocol(Answer), clock),
        }
        results = {name: [] for name in engines}
        hs: dict = {}
        for _ in range(args.rounds):
            for name, make in engines.items():
                results[name].append(run(make(), clock, client_ctx, args.requests))
            if args.handshakes:
                tls12 = ssl.create_default_context()
                ca.configure_trust(tls12)
                tls12.maximum_version = ssl.TLSVersion.TLSv1_2
                for label, ctx, resumed in (("full TLS 1.3", client_ctx, False),
                                            ("resumed TLS 1.2", tls12, True)):
                    got = handshakes(engines, clock, ctx, args.handshakes, resumed)
                    for name, value in got.items():
                        hs.setdefault((label, name), []).append(value)
    for name, values in results.items():
        print(f"{name:8s} min {min(values):6.2f} µs/request  (rounds: "
              + ", ".join(f"{v:.2f}" for v in values) + ")")
    for (label, name), values in hs.items():
        print(f"{label:16s} {name:8s} min {min(values):7.1f} µs/handshake (server side)")
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
