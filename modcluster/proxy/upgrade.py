"""
The body of an HTTP/1.1 Upgrade request that is not tunnelled (the node did
not answer 101), read by L{modcluster.proxy.client.ClientProtocol}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from httptools import HttpRequestParser

    from modcluster.proxy.client import ClientProtocol
    from modcluster.proxy.exchange import _Exchange

__all__ = ["BodyAfterUpgrade"]


class BodyAfterUpgrade:
    """
    Parser callbacks for the body of an Upgrade request that is not tunnelled:
    a fresh parser is given a made-up head with the request's framing, then the
    bytes llhttp did not read; from the next request on everything goes to the
    client protocol as usual.
    """

    def __init__(self, proto: ClientProtocol, ex: _Exchange) -> None:
        self.proto = proto
        self.ex = ex
        self.parser: Optional[HttpRequestParser] = None  # set by the client protocol
        self.made_up = True

    def on_message_begin(self) -> None:
        if not self.made_up:
            self.proto.on_message_begin()

    def on_url(self, url: bytes) -> None:
        if not self.made_up:
            self.proto.on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.made_up:
            self.proto.on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.made_up:
            self.made_up = False
            self.proto._reading = self.ex
        else:
            self.proto._parser = self.parser
            self.proto.on_headers_complete()

    def on_body(self, data: bytes) -> None:
        self.proto.on_body(data)

    def on_message_complete(self) -> None:
        self.proto.on_message_complete()
