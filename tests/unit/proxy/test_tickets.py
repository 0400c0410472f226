"""
modcluster.proxy.tickets in memory: real TLS handshakes between stdlib
SSLObjects on memory BIOs, server contexts with the shared ticket key set
(standing for two worker processes, or a context before and after a
certificate reload), rotation on a task.Clock, key files, the guard of the
ctypes access.
"""

from __future__ import annotations

import ctypes
import os
import ssl
from types import SimpleNamespace

import pytest
import trustme
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from modcluster.proxy import tickets
from modcluster.proxy.tickets import (
    KEY_SIZE,
    KeySet,
    TicketKeyService,
    install,
    load_key_file,
    parse_key_file,
    set_keys,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("tickets")
    ca = trustme.CA()
    paths = {}
    for name in ("first.example", "second.example"):
        pem = d / f"{name}.pem"
        ca.issue_cert("localhost", name).private_key_and_cert_chain_pem.write_to_path(str(pem))
        paths[name] = str(pem)
    ca_path = d / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    return SimpleNamespace(ca=str(ca_path), first=paths["first.example"],
                           second=paths["second.example"])


@pytest.fixture(autouse=True)
def fresh_keys():
    """Each test starts with its own key set and leaves none behind."""
    set_keys(KeySet.generate())
    yield
    set_keys(KeySet.generate())


def server(pki, cert="first", shared=True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(getattr(pki, cert))
    if shared:
        assert install(ctx)
    return ctx


def client(pki, version) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.ca)
    ctx.maximum_version = ctx.minimum_version = getattr(ssl.TLSVersion, version)
    return ctx


def connect(server_ctx, client_ctx, session=None):
    """A handshake and one byte each way in memory: (reused, the client's session)."""
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    cli = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost", session=session)

    def step(obj, fn):
        try:
            return fn()
        except ssl.SSLWantReadError:
            return None

    for _ in range(10):
        done_c = step(cli, cli.do_handshake) is not None or cli.version() is not None
        s_in.write(c_out.read())
        step(srv, srv.do_handshake)
        c_in.write(s_out.read())
        if done_c and srv.version() is not None:
            break
    step(srv, lambda: srv.write(b"s"))
    c_in.write(s_out.read())
    assert step(cli, lambda: cli.read(1)) == b"s"  # TLS 1.3: the tickets came with it
    cli.write(b"c")
    s_in.write(c_out.read())
    assert step(srv, lambda: srv.read(1)) == b"c"
    assert srv.session_reused == cli.session_reused
    return cli.session_reused, cli.session


VERSIONS = pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])


@VERSIONS
def test_tickets_of_one_context_resume_on_another(pki, version):
    """Two contexts (two worker processes, before/after a reload) share the keys;
    OpenSSL's own per-context keys do not."""
    c = client(pki, version)
    reused, session = connect(server(pki), c)
    assert not reused and session.has_ticket
    assert connect(server(pki), c, session)[0]
    assert connect(server(pki, "second"), c, session)[0]  # a reloaded certificate
    assert not connect(server(pki, shared=False), c, session)[0]


@VERSIONS
def test_a_ticket_of_other_keys_gets_a_full_handshake(pki, version):
    c = client(pki, version)
    _, session = connect(server(pki), c)
    set_keys(KeySet.generate())
    reused, fresh = connect(server(pki), c, session)
    assert not reused and fresh.has_ticket
    assert connect(server(pki), c, fresh)[0]


@VERSIONS
def test_rotation_keeps_old_tickets_for_the_kept_keys(pki, version):
    clock = Clock()
    service = TicketKeyService(clock, rotation=3600, kept=2)
    service.startService()
    try:
        ctx, c = server(pki), client(pki, version)
        _, session = connect(ctx, c)
        first = service.keys.keys[0]
        clock.advance(3600)
        assert service.keys.keys[0] != first and service.keys.keys[1] == first
        assert connect(ctx, c, session)[0]  # decrypted with a kept key
        clock.advance(3600)
        assert len(service.keys.keys) == 3 and service.keys.keys[2] == first
        assert connect(ctx, c, session)[0]
        clock.advance(3600)  # the key of the ticket is gone
        assert first not in service.keys.keys and len(service.keys.keys) == 3
        assert not connect(ctx, c, session)[0]
    finally:
        service.stopService()
    assert not service._rotate.running


def test_rotation_zero_never_rotates():
    clock = Clock()
    service = TicketKeyService(clock, rotation=0)
    service.startService()
    keys = service.keys
    clock.advance(10 ** 6)
    assert service.keys is keys and tickets.current_keys() is keys
    service.stopService()


def test_keys_published_at_start_and_rotation():
    published = []
    clock = Clock()
    service = TicketKeyService(clock, rotation=60, kept=1, publish=published.append)
    service.startService()
    clock.advance(60)
    clock.advance(60)
    service.stopService()
    assert [len(k.keys) for k in published] == [1, 2, 2]
    assert published[-1] is tickets.current_keys()


def _key_file(tmp_path, keys=2, name="keys"):
    import os

    path = tmp_path / name
    path.write_bytes(os.urandom(KEY_SIZE * keys))
    return str(path)


@VERSIONS
def test_key_file_shared_by_two_balancers(pki, tmp_path, version):
    """nginx's format: the first key encrypts; a file with that key second still
    decrypts (the other balancer rotated first)."""
    path = _key_file(tmp_path)
    keys = load_key_file(path)
    assert len(keys.keys) == 2
    raw = open(path, "rb").read()
    assert keys.keys[0] == (raw[:16], raw[16:48], raw[48:80])
    set_keys(keys)
    c = client(pki, version)
    _, session = connect(server(pki), c)
    set_keys(parse_key_file(raw[80:] + raw[:80]))  # the other balancer, rotated
    assert connect(server(pki), c, session)[0]


@pytest.mark.parametrize("data,error", [
    (b"", "0 bytes"), (b"x" * 48, "48 bytes"), (b"x" * 81, "81 bytes"),
    (b"x" * 160, "same name")])
def test_damaged_key_files_are_refused(data, error):
    with pytest.raises(ValueError, match=error):
        parse_key_file(data, "f")


def _errors(fn):
    events = []
    globalLogPublisher.addObserver(events.append)
    try:
        fn()
    finally:
        globalLogPublisher.removeObserver(events.append)
    return [e for e in events if e.get("log_level") is not None
            and e["log_level"].name in ("error", "warn")]


def test_reload_rereads_the_file_and_keeps_the_keys_when_damaged(tmp_path):
    path = _key_file(tmp_path, 1)
    service = TicketKeyService(Clock(), path)
    service.startService()
    first = service.keys
    assert first.keys == load_key_file(path).keys and not service._rotate.running
    assert not service.reload()  # unchanged
    _key_file(tmp_path, 3)
    assert service.reload() and len(tickets.current_keys().keys) == 3
    kept = service.keys
    with open(path, "wb") as f:
        f.write(b"damaged")
    errors = _errors(lambda: service.reload())
    assert service.keys is kept and tickets.current_keys() is kept
    assert any("not reloaded" in e["log_format"] for e in errors)
    service.stopService()


def test_unreadable_file_at_start_generates_keys_with_an_error(tmp_path):
    service = TicketKeyService(Clock(), str(tmp_path / "missing"))
    errors = _errors(service.startService)
    assert service.keys is not None and len(service.keys.keys) == 1
    assert any("generated keys instead" in e["log_format"] for e in errors)
    service.stopService()


def test_a_key_file_that_is_not_a_regular_file_is_refused_at_once(tmp_path):
    """
    A named pipe with no writer (or a device) at the key file's path: the
    reload (and the start) must not block the process on open/read; refused
    like a damaged file, the current keys stay.
    """
    import threading

    path = _key_file(tmp_path, 1)
    service = TicketKeyService(Clock(), path)
    service.startService()
    kept = service.keys
    os.unlink(path)
    os.mkfifo(path)
    done = []
    errors = []
    worker = threading.Thread(target=lambda: errors.extend(_errors(
        lambda: done.append(service.reload()))), daemon=True)
    worker.start()
    worker.join(5)
    try:
        assert done == [False], "the reload blocked on the pipe"
    finally:
        if worker.is_alive():  # (unblock the old code's open)
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
            worker.join(5)
    assert service.keys is kept and tickets.current_keys() is kept
    assert any("not a regular file" in str(e.get("error")) for e in errors)
    with pytest.raises(ValueError, match="not a regular file"):
        load_key_file("/dev/zero")
    service.stopService()


def test_bad_key_sets_are_refused():
    for bad in ([], [(b"a" * 16, b"b" * 32)], [(b"a" * 16, b"b" * 32, b"c" * 16)],
                [("a" * 16, b"b" * 32, b"c" * 32)]):
        with pytest.raises(ValueError):
            KeySet(bad)


# -- the guard of the ctypes access ------------------------------------------------------


def test_the_guard_holds_on_this_python():
    """Pinned: CPython's SSLContext layout and the loaded libssl are what install
    relies on (a change of either makes this fail, and install fall back)."""
    lib = tickets._probe()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= ssl.OP_NO_TICKET
    assert lib.libssl.SSL_CTX_get_options(tickets._ctx_pointer(ctx)) == int(ctx.options)


def test_a_pointer_that_is_not_the_context_falls_back_with_one_warning(pki, monkeypatch):
    other = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    other.options |= ssl.OP_NO_TICKET  # differs from the contexts installed
    monkeypatch.setattr(tickets, "_ctx_pointer", lambda ctx: _real_pointer(other))
    monkeypatch.setattr(tickets, "_unavailable", None)
    warnings = _errors(lambda: [install(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
                                for _ in range(3)])
    assert len(warnings) == 1 and "OpenSSL's own" in warnings[0]["log_format"]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.first)
    assert not install(ctx)
    assert not connect(ctx, client(pki, "TLSv1_3"))[0]  # still serves


def test_a_failed_probe_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(tickets, "_lib", None)
    monkeypatch.setattr(tickets, "_unavailable", None)
    monkeypatch.setattr(tickets, "_loaded", lambda name: None)
    warnings = _errors(lambda: [install(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
                                for _ in range(3)])
    assert len(warnings) == 1 and "/proc/self/maps" in warnings[0]["why"]


_real_pointer = tickets._ctx_pointer


def test_callback_errors_mean_no_ticket_never_a_crash(pki, monkeypatch):
    ctx, c = server(pki), client(pki, "TLSv1_2")
    _, session = connect(ctx, c)

    class Broken:  # a key set whose every use raises
        @property
        def keys(self):
            raise RuntimeError("boom")

        _by_name = keys

    monkeypatch.setattr(tickets, "_keys", Broken())
    before = tickets._lib.failures
    reused, fresh = connect(ctx, c, session)
    assert not reused and not fresh.has_ticket
    assert tickets._lib.failures > before


def test_the_callback_uses_fetched_algorithms_and_keeps_the_gil():
    """The AES and SHA-256 the callback hands OpenSSL come from a provider
    (fetched once, not looked up again by every EVP_*Init_ex of a ticket), and
    its calls into libcrypto do not release the GIL (a PyDLL handle)."""
    lib = tickets._probe()
    crypto = ctypes.CDLL(lib.libcrypto._name)
    for name in ("EVP_CIPHER_get0_provider", "EVP_MD_get0_provider"):
        getattr(crypto, name).argtypes = [ctypes.c_void_p]
        getattr(crypto, name).restype = ctypes.c_void_p
    assert crypto.EVP_CIPHER_get0_provider(lib.aes)
    assert crypto.EVP_MD_get0_provider(lib.sha256)
    assert isinstance(lib.crypto, ctypes.PyDLL)
    for name in ("EVP_EncryptInit_ex", "EVP_DecryptInit_ex", "HMAC_Init_ex", "RAND_bytes"):
        assert getattr(lib.crypto, name)._flags_ & ctypes._FUNCFLAG_PYTHONAPI


def test_tickets_resume_with_the_fetched_algorithms_on_both_versions(pki):
    ctx = server(pki)
    for version in ("TLSv1_2", "TLSv1_3"):
        c = client(pki, version)
        _, session = connect(ctx, c)
        reused, _ = connect(ctx, c, session)
        assert reused
