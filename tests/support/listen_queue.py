"""
The listen queue length (backlog) the kernel really gives a listening TCP
socket, read over netlink (C{NETLINK_SOCK_DIAG}, what C{ss -lnt} shows as
Send-Q): for a socket in LISTEN state C{idiag_wqueue} is its maximum accept
queue, C{min(backlog, net.core.somaxconn)}.  Linux only.
"""

from __future__ import annotations

import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
TCP_LISTEN = 10

_NLMSGHDR = struct.Struct("=IHHII")
# family, protocol, ext, pad, states, sockid (sport, dport, src[16], dst[16], if, cookie[8])
_REQ = struct.Struct("=BBBBI2s2s16s16sI8s")
# family, state, timer, retrans, sockid, expires, rqueue, wqueue, uid, inode
_MSG = struct.Struct("=BBBB2s2s16s16sI8sIIIII")


def listen_backlogs(port: int, family: int = socket.AF_INET) -> list[int]:
    """The maximum accept queue of every listening TCP socket on C{port}."""
    req = _REQ.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN, b"\0\0", b"\0\0",
                    b"\0" * 16, b"\0" * 16, 0, b"\xff" * 8)
    msg = _NLMSGHDR.pack(_NLMSGHDR.size + len(req), SOCK_DIAG_BY_FAMILY,
                         NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req
    found = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as s:
        s.settimeout(5)
        s.send(msg)
        while True:
            data = s.recv(1 << 16)
            offset = 0
            while offset + _NLMSGHDR.size <= len(data):
                length, kind, _, _, _ = _NLMSGHDR.unpack_from(data, offset)
                if kind == NLMSG_DONE:
                    return found
                if kind == NLMSG_ERROR:
                    raise OSError("sock_diag request refused")
                fields = _MSG.unpack_from(data, offset + _NLMSGHDR.size)
                sport = struct.unpack("!H", fields[4])[0]
                if fields[1] == TCP_LISTEN and sport == port:
                    found.append(fields[12])
                offset += (length + 3) & ~3
