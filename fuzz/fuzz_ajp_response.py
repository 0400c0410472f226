"""
Fuzz target for the AJP13 container -> server parser (ResponseParser) and the
client protocol that consumes it.

Invariants checked for every input:
 1. ResponseParser.feed raises nothing but AJPProtocolError;
 2. feeding the input whole or split at a point derived from the input gives
    the same messages and the same error type;
 3. AJPClientProtocol.dataReceived, with a request in flight, never raises
    (errors become receiver.responseFailed + a dropped connection), and the
    receiver sees at most one responseEnded/responseFailed.

Run (bounded) with atheris, installed in the project venv:

    .venv/bin/python fuzz/fuzz_ajp_response.py -atheris_runs=200000

or for a fixed time: ``-max_total_time=60``.  Extra libFuzzer arguments and
corpus directories pass through; without a corpus directory a temporary one
is seeded with valid response streams.  Without atheris the script falls back
to Hypothesis (``--hypothesis [N]`` forces it; N examples, default 20000).
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

try:
    import atheris
except ImportError:  # pragma: no cover - depends on the environment
    atheris = None

if atheris is not None and "--hypothesis" not in sys.argv:
    with atheris.instrument_imports():
        from modcluster.ajp import container, packets, protocol, response
else:
    from modcluster.ajp import container, packets, protocol, response

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer


def _parse(pieces):
    parser = response.ResponseParser(packets.DEFAULT_PACKET_SIZE)
    out = []
    try:
        for piece in pieces:
            out += parser.feed(piece)
    except packets.AJPProtocolError as e:
        return out + list(e.messages), type(e)
    except Exception as e:  # anything else is a bug
        raise AssertionError(f"parser raised {type(e).__name__}: {e}") from e
    return out, None


@implementer(protocol.IAJPResponseReceiver)
class _Receiver:
    def __init__(self):
        self.outcomes = 0

    def requestWritten(self):
        pass

    def readComplete(self):
        assert self.outcomes == 0

    def headReceived(self, status, reason, headers):
        assert 100 <= status <= 999

    def bodyReceived(self, data):
        assert type(data) is bytes

    def responseEnded(self, reusable):
        self.outcomes += 1

    def responseFailed(self, reason, responseStarted, requestSent):
        self.outcomes += 1


_REQUEST = packets.encode_forward_request(packets.ForwardRequest(
    b"POST", b"HTTP/1.1", b"/", b"127.0.0.1", b"127.0.0.1", b"localhost", 80,
    headers=((b"Transfer-Encoding", b"chunked"),)))


def test_one_input(data: bytes) -> None:
    """
    The fuzz entry point (see the module docstring).
    """
    whole = _parse([data])
    split = data[0] % (len(data) + 1) if data else 0
    assert _parse([data[:split], data[split:]]) == whole, "split parse differs"

    proto = protocol.AJPClientProtocol(Clock(), readTimeout=30)
    proto.makeConnection(StringTransport())
    receiver = _Receiver()
    body = proto.sendRequest(_REQUEST, receiver, bodyLength=None)
    body.write(b"x" * (len(data) % 9000))
    proto.dataReceived(data[:split])
    body.finish()
    proto.dataReceived(data[split:])
    assert receiver.outcomes <= 1


def _seeds():
    head = container.encode_send_headers(
        200, b"200",
        [(b"Content-Type", b"text/plain"), (b"X-Custom", b"v"), (b"Set-Cookie", b"a=b")])
    return [
        head + container.encode_send_body_chunk(b"hello") + container.encode_end_response(True),
        container.encode_get_body_chunk(8186) + head + container.encode_send_body_chunk(b"")
        + container.encode_end_response(False),
        packets.CPONG_PACKET,
        container.encode_send_headers(304, b"304") + container.encode_end_response(True),
    ]


def _hypothesis(examples: int) -> None:
    from hypothesis import HealthCheck, given, settings, strategies as st

    seeds = _seeds()

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(
        st.binary(max_size=300),
        st.tuples(st.sampled_from(seeds), st.integers(0, 200), st.binary(max_size=4)).map(
            lambda t: t[0][:t[1]] + t[2] + t[0][t[1] + len(t[2]):]),
    ))
    def fuzz(data):
        test_one_input(data)

    fuzz()
    print(f"hypothesis: {examples} examples, no invariant broken")


def main() -> None:
    if atheris is None or "--hypothesis" in sys.argv:
        args = sys.argv[sys.argv.index("--hypothesis") + 1:] if "--hypothesis" in sys.argv else []
        _hypothesis(int(args[0]) if args else 20000)
        return
    argv = list(sys.argv)
    if not any(os.path.isdir(a) for a in argv[1:]):
        corpus = tempfile.mkdtemp(prefix="ajp-response-corpus-")
        for i, seed in enumerate(_seeds()):
            with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
                f.write(seed)
        argv.append(corpus)
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
