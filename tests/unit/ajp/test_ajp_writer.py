"""
AJPClientProtocol's optional writer: everything sent to the container goes
through the function C{writer(transport)} returned when the connection was made.
"""

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from modcluster.ajp.container import encode_end_response, encode_get_body_chunk, encode_send_headers
from modcluster.ajp.packets import (
    CPING_PACKET,
    ForwardRequest,
    body_chunk_header,
    encode_forward_request,
)
from modcluster.ajp.protocol import AJPClientProtocol

from tests.unit.ajp.test_ajp_protocol import Receiver


def _request(method=b"POST"):
    return ForwardRequest(method, b"HTTP/1.1", b"/app", b"127.0.0.1", b"127.0.0.1",
                          b"localhost", 8000, False, ((b"Content-Length", b"4"),))


def test_writer_gets_every_write():
    transports = []
    writes = []

    def writer(transport):
        transports.append(transport)
        return writes.append

    proto = AJPClientProtocol(Clock(), writer=writer)
    transport = StringTransport()
    proto.makeConnection(transport)
    assert transports == [transport]
    receiver = Receiver()
    channel = proto.sendRequest(_request(), receiver, bodyLength=4)
    channel.write(b"ab")
    proto.dataReceived(encode_get_body_chunk(100))
    channel.write(b"cd")
    channel.finish()
    proto.dataReceived(encode_get_body_chunk(100))
    proto.dataReceived(encode_send_headers(200, b"OK", []) + encode_end_response(True))
    cping = proto.cping(1.0)
    assert transport.value() == b""  # nothing bypassed the writer
    joined = b"".join(writes)
    assert joined.startswith(encode_forward_request(_request()))
    assert body_chunk_header(2) + b"ab" in joined
    assert body_chunk_header(2) + b"cd" in joined
    assert joined.endswith(CPING_PACKET)
    cping.cancel()


def test_default_writes_to_transport():
    proto = AJPClientProtocol(Clock())
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.sendRequest(_request(b"GET"), Receiver(), bodyLength=0)
    assert transport.value().startswith(encode_forward_request(_request(b"GET")))
