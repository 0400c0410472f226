#!/usr/bin/env python3
"""
Python cost of one HTTP/2 request through txmodcluster, in memory (not a test).

    .venv/bin/python bench/h2_quick.py [--requests 5000] [--size 100] [--profile]

The real ProxyFactory and HTTP forwarder (bench/ajp_quick.py's one-node
factory), one L{H2Protocol} client connection and one node connection on
sink transports.  The client's bytes (HEADERS frames of GET requests, one
stream at a time, HPACK-compressed as h2load's would be) are generated
beforehand by an h2 client state machine, so only the proxy's work is timed:
decoding the request, routing, the HTTP/1.1 request to the node, parsing the
node's nginx-like answer, and framing it as HTTP/2 (HPACK, DATA).  Prints the
best of five runs in microseconds of CPU per request.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from ajp_quick import CODE, LOOPBACK, _Sink, one_node_factory  # noqa: E402


def client_chunks(total: int, server_preamble: bytes) -> list:
    from h2.config import H2Configuration
    from h2.connection import H2Connection

    c = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    c.increment_flow_control_window(2**31 - 1 - 65535)
    c.receive_data(server_preamble)  # its SETTINGS: acknowledged in the first chunk
    headers = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"127.0.0.1:8443"),
               (b":path", b"/f"), (b"user-agent", b"h2load nghttp2/1.52.0")]
    out = []
    for _ in range(total):
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, headers, end_stream=True)
        out.append(c.data_to_send())
        # the client's view of the stream is closed without reading the response
        c.streams.pop(sid, None)
    return out


def inproc(size: int, requests: int, profile: bool = False) -> float:
    sys.path.insert(0, CODE)
    from twisted.internet.interfaces import ISSLTransport
    from twisted.internet.testing import MemoryReactorClock
    from zope.interface import directlyProvides

    from modcluster.proxy.h2 import H2Protocol

    reactor = MemoryReactorClock()
    factory = one_node_factory(reactor, "http", 9)
    ct = _Sink(host=(LOOPBACK, 8443))
    directlyProvides(ct, ISSLTransport)
    client = H2Protocol(factory)
    client.makeConnection(ct)
    preamble = b"".join(ct.out)
    del ct.out[:]
    total = 2000 + 1 + 5 * requests + (requests if profile else 0) + 1
    chunks = iter(client_chunks(total, preamble))
    answer = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n"
              b"Date: Sat, 22 Nov 2026 06:00:00 GMT\r\nContent-Type: text/plain\r\n"
              b"Content-Length: %d\r\nLast-Modified: Sat, 22 Nov 2026 05:00:00 GMT\r\n"
              b"Connection: keep-alive\r\nETag: \"6920f8a0-64\"\r\n"
              b"Accept-Ranges: bytes\r\n\r\n" % size + b"x" * size)
    client.dataReceived(next(chunks))
    host, port, nf = reactor.tcpClients[-1][:3]
    node = nf.buildProtocol(None)
    nt = _Sink(peer=(LOOPBACK, port), host=(LOOPBACK, 50000))
    node.makeConnection(nt)
    node.dataReceived(answer)
    if not ct.out or not b"".join(ct.out).endswith(b"x" * size):
        raise RuntimeError(f"no response relayed: {ct.out[-3:]!r}")
    del ct.out[:]
    feed_client = client.dataReceived
    feed_node = node.dataReceived
    cout = ct.out
    nout = nt.out

    def run(n: int) -> None:
        for _ in range(n):
            feed_client(next(chunks))
            feed_node(answer)
            del cout[:]
            del nout[:]

    run(2000)
    feed_client(next(chunks))
    feed_node(answer)
    out = b"".join(cout)
    if not out.endswith(b"x" * size) or client.streams:
        raise RuntimeError(f"unexpected response: {cout!r}")
    del cout[:]
    if profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(run, requests)
        st = pstats.Stats(prof, stream=sys.stdout)
        st.sort_stats("tottime").print_stats(35)
    best = float("inf")
    for _ in range(5):
        t0 = time.process_time()
        run(requests)
        best = min(best, time.process_time() - t0)
    return best / requests * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=5000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    us = inproc(args.size, args.requests, args.profile)
    print(f"HTTP/2 in memory: {us:.1f} us/request ({args.size}-byte body)")


if __name__ == "__main__":
    main()
