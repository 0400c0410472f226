"""
Checks start-up would otherwise fail on, run before anything is bound.

L{problems} reads every file the configuration names (certificates, keys, CA
files), checks that keys match their certificates, parses every endpoint
description (without binding anything), finds listeners given twice and
values only the services would refuse (a non-ASCII advertise key).  Each
problem is one line naming the key.  C{twistd modcluster --check} prints them;
start-up refuses to run with any of them.

Nothing here binds a socket or starts the reactor.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Iterator, Optional

from modcluster.config import Config

__all__ = ["problems", "endpoint_problems", "split_endpoint"]

#: Keyword arguments Twisted's server endpoint parsers accept, per kind.
_KEYWORDS = {
    "tcp": {"port", "interface", "backlog"},
    "tcp6": {"port", "interface", "backlog"},
    "ssl": {"port", "interface", "backlog", "privateKey", "certKey", "sslmethod",
            "extraCertChain", "dhParameters"},
    "unix": {"address", "mode", "backlog", "lockfile"},
    "systemd": {"domain", "index", "name"},
}

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


def split_endpoint(description: str) -> tuple[str, list[str], dict[str, str]]:
    """
    C{"tcp:80:interface=127.0.0.1"} → C{("tcp", ["80"], {"interface": "127.0.0.1"})},
    honouring backslash escapes as Twisted does.
    """
    parts, current, escaped = [], "", False
    for ch in description:
        if escaped:
            current += ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ":":
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    kind, args = parts[0], parts[1:]
    keywords = {}
    positional = []
    for a in args:
        if "=" in a:
            k, v = a.split("=", 1)
            keywords[k] = v
        else:
            positional.append(a)
    return kind, positional, keywords


def _interface_problem(value: str, kind: str) -> Optional[str]:
    if value == "":
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        if re.fullmatch(r"[0-9.]+", value) or ":" in value or not _HOSTNAME.match(value):
            return f"interface={value} is not an IP address"
        return None
    if kind == "tcp6" and address.version != 6:
        return f"interface={value}: a tcp6 listener needs an IPv6 address"
    return None


def _read_problem(path: str, what: str) -> Optional[str]:
    try:
        with open(path, "rb"):
            return None
    except OSError as e:
        return f"cannot read {what} {path}: {e.strerror}"


def endpoint_problems(description: str) -> list[str]:
    """
    What is wrong with one server endpoint description (empty: nothing),
    without binding it.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    kind, positional, kw = split_endpoint(description)
    if kind not in _KEYWORDS:
        return [f"{description!r}: unknown listener kind {kind!r} "
                f"(expected one of {', '.join(sorted(_KEYWORDS))})"]
    found = []
    unknown = sorted(set(kw) - _KEYWORDS[kind])
    if unknown:
        found.append(f"{description!r}: unknown parameter {', '.join(unknown)} for a "
                     f"{kind} listener")
    if kind in ("tcp", "tcp6", "ssl"):
        port = kw.get("port", positional[0] if positional else None)
        if port is None:
            found.append(f"{description!r}: no port")
        elif not port.isdigit() or not 0 <= int(port) <= 65535:
            found.append(f"{description!r}: port {port!r} is not a number 0..65535")
        problem = _interface_problem(kw.get("interface", ""), kind)
        if problem:
            found.append(f"{description!r}: {problem}")
        if len(positional) > 1:
            found.append(f"{description!r}: unexpected {':'.join(positional[1:])!r}")
    if "backlog" in kw and not (kw["backlog"].isdigit() and int(kw["backlog"]) > 0):
        found.append(f"{description!r}: backlog={kw['backlog']} is not a positive number")
    if kind == "ssl":
        found.extend(_ssl_problems(description, kw))
    if kind == "unix":
        address = kw.get("address", positional[0] if positional else "")
        directory = os.path.dirname(os.path.abspath(address)) if address else ""
        if not address:
            found.append(f"{description!r}: no socket path")
        elif not os.path.isdir(directory):
            found.append(f"{description!r}: directory {directory} does not exist")
    if kind == "systemd":
        # The sockets exist only once systemd starts us: check the syntax alone.
        if kw.get("domain") not in ("INET", "INET6", "UNIX"):
            found.append(f"{description!r}: domain= must be INET, INET6 or UNIX")
        if "index" not in kw and "name" not in kw:
            found.append(f"{description!r}: needs index=N or name=NAME")
        elif "index" in kw and not kw["index"].isdigit():
            found.append(f"{description!r}: index={kw['index']} is not a number")
        return found
    if found:
        return found
    try:
        # Parse only: a MemoryReactor records, never binds.
        serverFromString(MemoryReactor(), description)
    except Exception as e:  # noqa: BLE001 - Twisted raises many kinds here
        return [f"{description!r}: {e}"]
    return []


def _ssl_problems(description: str, kw: dict[str, str]) -> list[str]:
    from modcluster.tls import TLSConfigError, server_context_factory

    key = kw.get("privateKey")
    if not key:
        return [f"{description!r}: an ssl listener needs privateKey=FILE (and certKey=FILE "
                "unless the key file also holds the certificate)"]
    cert = kw.get("certKey", key)
    found = [p for p in (_read_problem(key, "private key"),
                         _read_problem(cert, "certificate") if cert != key else None) if p]
    for name in ("extraCertChain", "dhParameters"):
        if name in kw:
            p = _read_problem(kw[name], name)
            if p:
                found.append(p)
    if found:
        return [f"{description!r}: {p}" for p in found]
    try:
        server_context_factory(cert, key, None, require_client_cert=False)
    except TLSConfigError as e:
        return [f"{description!r}: {e}"]
    return []


def _address_key(description: str):
    """
    C{(kind, host, port)} a listener occupies, C{None} when it cannot clash
    (port 0, systemd sockets) or is malformed.
    """
    kind, positional, kw = split_endpoint(description)
    if kind == "unix":
        address = kw.get("address", positional[0] if positional else "")
        return ("unix", os.path.abspath(address), 0) if address else None
    if kind not in ("tcp", "tcp6", "ssl"):
        return None
    port = kw.get("port", positional[0] if positional else "0")
    if not port.isdigit() or int(port) == 0:
        return None
    host = kw.get("interface", "") or ("::" if kind == "tcp6" else "0.0.0.0")
    return ("inet", host, int(port))


def _listeners(config: Config) -> Iterator[tuple[str, str]]:
    """Every C{(key, endpoint description)} the balancer binds."""
    c = config.console
    console = c.listen if (c.enabled or c.api or c.metrics) else ()  # else nothing binds
    for section, values in (("manager.listen", config.manager.listen),
                            ("proxy.listen", config.proxy.listen),
                            ("console.listen", console)):
        for i, description in enumerate(values):
            yield f"{section}[{i}]", description


def _duplicates(listeners: list[tuple[str, str]]) -> list[str]:
    found = []
    seen: list[tuple[tuple, str]] = []
    wildcards = ("0.0.0.0", "::")
    for key, description in listeners:
        address = _address_key(description)
        if address is None:
            continue
        for other, other_key in seen:
            same = other == address or (
                other[0] == address[0] == "inet" and other[2] == address[2]
                and (other[1] in wildcards or address[1] in wildcards))
            if same:
                found.append(f"{key}: {description!r} uses the same address as "
                             f"{other_key}")
                break
        else:
            seen.append((address, key))
    return found


def _tls_file_problems(key: str, path: Optional[str], what: str) -> list[str]:
    if path is None:
        return []
    p = _read_problem(path, what)
    return [f"{key}: {p}"] if p else []


def problems(config: Config) -> list[str]:
    """
    Every problem start-up would hit with C{config}, one line each, naming
    the key.  Empty when the configuration can start.
    """
    from modcluster.tls import TLSConfigError

    found: list[str] = []
    listeners = list(_listeners(config))
    for key, description in listeners:
        found.extend(f"{key}: {p}" for p in endpoint_problems(description))
    found.extend(_duplicates(listeners))
    from modcluster.accesslog import path_problem

    log_problem = path_problem(config.proxy.access_log)
    if log_problem is not None:
        found.append(log_problem)

    if config.proxy.tls_ticket_keys:
        from modcluster.proxy.tickets import load_key_file

        try:
            load_key_file(config.proxy.tls_ticket_keys)
        except OSError as e:
            found.append(f"proxy.tls_ticket_keys: {config.proxy.tls_ticket_keys}: "
                         f"{e.strerror or e}")
        except ValueError as e:
            found.append(f"proxy.tls_ticket_keys: {e}")

    t = config.manager.tls
    if t.enabled:
        files = (_tls_file_problems("manager.tls.certificate", t.certificate, "certificate")
                 + _tls_file_problems("manager.tls.private_key", t.private_key, "private key")
                 + _tls_file_problems("manager.tls.ca", t.ca, "CA certificate"))
        found.extend(files)
        if not files:
            from modcluster.tls import server_context_factory

            assert t.certificate is not None  # TLSSettings requires it when enabled
            try:
                server_context_factory(
                    t.certificate, t.private_key, t.ca,
                    require_client_cert=t.require_client_certificate,
                    min_version=t.minimum_version, ciphers=t.ciphers)
            except TLSConfigError as e:
                found.append(f"manager.tls: {e}")

    n = config.proxy.tls
    files = (_tls_file_problems("proxy.tls.ca", n.ca, "CA certificate")
             + _tls_file_problems("proxy.tls.client_certificate", n.client_certificate,
                                  "certificate")
             + _tls_file_problems("proxy.tls.client_private_key", n.client_private_key,
                                  "private key"))
    found.extend(files)
    if not files and (n.ca or n.client_certificate or n.client_private_key):
        found.extend(_node_tls_problems(n))

    a = config.advertise
    if a.security_key is not None:
        try:
            a.security_key.encode("ascii")
        except UnicodeEncodeError:
            found.append("advertise.security_key: must be ASCII (the Java listener turns "
                         "every other character into '?')")
    return found


def _node_tls_problems(n) -> list[str]:
    from twisted.internet.ssl import CertificateOptions

    from modcluster.tls import (
        TLSConfigError,
        client_context_factory,
        load_certificates,
        load_private_key,
    )

    try:
        client_context_factory("localhost", n.ca, n.client_certificate,
                               n.client_private_key, verify=n.verify)
        if n.client_certificate is not None:
            from OpenSSL import SSL

            chain = load_certificates(n.client_certificate, "client certificate")
            key = load_private_key(n.client_private_key or n.client_certificate,
                                   "client private key")
            try:
                # pyOpenSSL takes cryptography certificates; Twisted's annotation says X509.
                CertificateOptions(
                    privateKey=key, certificate=chain[0],  # type: ignore[arg-type]
                ).getContext()
            except SSL.Error:
                return ["proxy.tls.client_private_key: does not match "
                        "proxy.tls.client_certificate"]
    except TLSConfigError as e:
        return [f"proxy.tls: {e}"]
    return []
