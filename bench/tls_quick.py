#!/usr/bin/env python3
"""
In-memory comparison of the proxy's two TLS engines (proxy.tls_engine): the
server side of one keep-alive HTTPS connection, a 100 B response per request,
no sockets and no reactor.

  .venv/bin/python bench/tls_quick.py [--requests N] [--rounds R] [--handshakes N]

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--handshakes", type=int, default=0,
                    help="also time N full (TLS 1.3) and N resumed (TLS 1.2 ticket) "
                         "handshakes per round, server side")
    ap.add_argument("--ecdsa", action="store_true",
                    help="an ECDSA P-256 certificate (default: RSA 2048, as bench/run.py)")
    args = ap.parse_args()
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
