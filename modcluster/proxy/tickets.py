"""
Session-ticket keys of the proxy's C{ssl:} listeners (stdlib TLS engine,
L{modcluster.proxy.stdtls}), managed by us as nginx's
C{ssl_session_ticket_key} and HAProxy's C{tls-ticket-keys} do.

OpenSSL gives every C{SSL_CTX} its own random ticket key: each worker
process would refuse the tickets of the others, a certificate reload (a new
context) would refuse every ticket issued before, and the key would never
change for the life of the process.  Here one key set (L{KeySet}: the first
key encrypts new tickets, all of them decrypt) serves every context of the
process, through OpenSSL's ticket key callback
(C{SSL_CTX_set_tlsext_ticket_key_cb}, used for TLS 1.2 and TLS 1.3 tickets
alike), installed with C{ctypes} since Python's C{ssl} module has no API for
it.  The control process makes the set (L{TicketKeyService}: generated and
rotated on a schedule, or read from a file) and hands it to the worker
processes (L{modcluster.proxy.workers}).

Reaching the C{SSL_CTX} of an C{ssl.SSLContext} relies on CPython's layout
(the pointer follows C{PyObject_HEAD}); L{install} checks it before any use:
the C{libssl} loaded by the C{_ssl} module is found in C{/proc/self/maps},
its version must be C{ssl.OPENSSL_VERSION_NUMBER}, and option flags set
through Python on a probe context must read back through the pointer with
C{SSL_CTX_get_options}, twice with different values.  When anything does not
hold, one warning line, and the contexts keep OpenSSL's own per-context key.

Key file format: nginx's, one or more 80-byte keys back to back (16 bytes key
name, 32 bytes HMAC-SHA256 secret, 32 bytes AES-256 key; C{openssl rand 80}
makes one); the first key encrypts, the others only decrypt.
"""

from __future__ import annotations

import ctypes
import os
import ssl
import stat
from typing import Any, Callable, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger()

__all__ = ["KEY_SIZE", "KeySet", "TicketKeyService", "install", "load_key_file",
           "set_keys", "current_keys"]

#: bytes of one key in a key file (nginx's format): name, HMAC secret, AES key
KEY_SIZE = 80
_NAME, _HMAC, _AES = 16, 32, 32

#: SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB (ssl.h)
_SET_TICKET_KEY_CB = 72

Key = tuple[bytes, bytes, bytes]  # (name, hmac secret, aes key)


class KeySet:
    """Ticket keys, the first one encrypting; C{keys} is replaced, never mutated."""

    def __init__(self, keys: Sequence[Key]) -> None:
        if not keys:
            raise ValueError("no ticket key")
        for key in keys:
            if (len(key) != 3 or not all(isinstance(b, bytes) for b in key)
                    or tuple(map(len, key)) != (_NAME, _HMAC, _AES)):
                raise ValueError("a ticket key is 16 + 32 + 32 bytes")
        self.keys: tuple[Key, ...] = tuple(keys)
        self._by_name = {k[0]: (i, k) for i, k in reversed(list(enumerate(self.keys)))}

    @staticmethod
    def new_key() -> Key:
        return os.urandom(_NAME), os.urandom(_HMAC), os.urandom(_AES)

    @classmethod
    def generate(cls) -> "KeySet":
        return cls([cls.new_key()])

    def rotated(self, kept: int) -> "KeySet":
        """A new encryption key, with the C{kept} newest keys of this set for decryption."""
        return KeySet([self.new_key(), *self.keys[:max(0, kept)]])

    def find(self, name: bytes) -> Optional[tuple[int, Key]]:
        return self._by_name.get(name)


def parse_key_file(data: bytes, path: str = "key file") -> KeySet:
    """The keys of a key file's content; ValueError with a clear message when damaged."""
    if not data or len(data) % KEY_SIZE:
        raise ValueError(f"{path}: {len(data)} bytes, a TLS session ticket key file holds "
                         f"one or more {KEY_SIZE}-byte keys (make one with "
                         f"`openssl rand {KEY_SIZE} > FILE`)")
    keys = []
    for i in range(0, len(data), KEY_SIZE):
        chunk = data[i:i + KEY_SIZE]
        keys.append((chunk[:_NAME], chunk[_NAME:_NAME + _HMAC], chunk[_NAME + _HMAC:]))
    if len({k[0] for k in keys}) != len(keys):
        raise ValueError(f"{path}: two keys have the same name (first 16 bytes)")
    return KeySet(keys)


def load_key_file(path: str) -> KeySet:
    """
    L{parse_key_file} of the file at C{path} (OSError, ValueError).  Only a
    regular file: opened without blocking, so a named pipe with no writer or
    a device at that path is refused at once instead of stopping the process
    on C{open}/C{read}.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{path}: not a regular file (a TLS session ticket key file "
                             f"holds one or more {KEY_SIZE}-byte keys)")
        data = f.read(KEY_SIZE * 1000 + 1)
    return parse_key_file(data, path)


# -- the keys of this process ---------------------------------------------------------

_keys: Optional[KeySet] = None


def set_keys(keys: KeySet) -> None:
    """The key set every installed context uses from now on."""
    global _keys
    _keys = keys


def current_keys() -> KeySet:
    """This process's key set (a generated one until L{set_keys})."""
    global _keys
    if _keys is None:
        _keys = KeySet.generate()
    return _keys


# -- OpenSSL's ticket key callback, through ctypes ---------------------------------------

# (every pointer as c_void_p: plain ints, the cheapest conversion per call)
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                             ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)


#: ctypes.string_at without its Python frame (the foreign function it calls)
_string_at = getattr(ctypes, "_string_at", ctypes.string_at)
_memmove = ctypes.memmove


class _OpenSSL:
    """The libssl/libcrypto functions the callback needs, checked (L{_probe})."""

    def __init__(self, libssl: Any, libcrypto: Any) -> None:
        self.libssl, self.libcrypto = libssl, libcrypto
        vp = ctypes.c_void_p
        # the callback's calls into libcrypto: through a PyDLL handle, which keeps
        # the GIL (each is short and does no I/O; releasing and retaking the GIL
        # around each cost ~2 300 instructions per ticket)
        crypto = ctypes.PyDLL(libcrypto._name)
        libssl.SSL_CTX_get_options.argtypes = [vp]
        libssl.SSL_CTX_get_options.restype = ctypes.c_uint64
        libssl.SSL_CTX_callback_ctrl.argtypes = [vp, ctypes.c_int, vp]
        libssl.SSL_CTX_callback_ctrl.restype = ctypes.c_long
        for name in ("EVP_EncryptInit_ex", "EVP_DecryptInit_ex"):
            fn = getattr(crypto, name)
            fn.argtypes = [vp, vp, vp, ctypes.c_char_p, vp]
            fn.restype = ctypes.c_int
        crypto.HMAC_Init_ex.argtypes = [vp, ctypes.c_char_p, ctypes.c_int, vp, vp]
        crypto.HMAC_Init_ex.restype = ctypes.c_int
        crypto.RAND_bytes.argtypes = [vp, ctypes.c_int]
        crypto.RAND_bytes.restype = ctypes.c_int
        self.crypto = crypto
        self.aes, self.sha256 = _algorithms(libcrypto)
        self.callback = _CALLBACK(self._ticket_key)  # kept for the life of the process
        self.failures = 0

    def _ticket_key(self, _ssl, name, iv, cipher_ctx, hmac_ctx, enc) -> int:
        # OpenSSL's contract: encrypt: 1 done, 0 no ticket; decrypt: 0 unknown
        # key (full handshake), 1 ok, 2 ok but renew the ticket; -1 fatal (never)
        try:
            crypto = self.crypto
            keys = _keys  # (current_keys(), inline: set once the process has keys)
            if keys is None:
                keys = current_keys()
            if enc:
                key_name, hmac, aes = keys.keys[0]
                _memmove(name, key_name, _NAME)
                if crypto.RAND_bytes(iv, 16) != 1:
                    return 0
                if (crypto.EVP_EncryptInit_ex(cipher_ctx, self.aes, None, aes, iv) != 1
                        or crypto.HMAC_Init_ex(hmac_ctx, hmac, _HMAC, self.sha256, None) != 1):
                    return 0
                return 1
            found = keys._by_name.get(_string_at(name, _NAME))  # (keys.find, inline)
            if found is None:
                return 0
            index, (_, hmac, aes) = found
            if (crypto.HMAC_Init_ex(hmac_ctx, hmac, _HMAC, self.sha256, None) != 1
                    or crypto.EVP_DecryptInit_ex(cipher_ctx, self.aes, None, aes, iv) != 1):
                return 0
            return 1 if index == 0 else 2
        except BaseException:  # never into OpenSSL: no ticket / a full handshake
            self.failures += 1
            return 0


def _algorithms(libcrypto: Any) -> tuple[int, int]:
    """
    AES-256-CBC and SHA-256 for the ticket callback: OpenSSL 3's fetched
    implementations (C{EVP_CIPHER_fetch}/C{EVP_MD_fetch}, once for the
    process), else the legacy C{EVP_aes_256_cbc()}/C{EVP_sha256()}, with which
    OpenSSL 3 looks the implementation up again on every C{EVP_*Init_ex} /
    C{HMAC_Init_ex} (~3 000 instructions more per ticket decrypted or issued).
    """
    vp = ctypes.c_void_p
    fetch_cipher = getattr(libcrypto, "EVP_CIPHER_fetch", None)
    fetch_md = getattr(libcrypto, "EVP_MD_fetch", None)
    if fetch_cipher is not None and fetch_md is not None:
        for fn in (fetch_cipher, fetch_md):
            fn.argtypes = [vp, ctypes.c_char_p, ctypes.c_char_p]
            fn.restype = vp
        aes, sha256 = fetch_cipher(None, b"AES-256-CBC", None), fetch_md(None, b"SHA256", None)
        if aes and sha256:
            return aes, sha256  # (never freed: kept for the life of the process)
    libcrypto.EVP_aes_256_cbc.restype = vp
    libcrypto.EVP_aes_256_cbc.argtypes = []
    libcrypto.EVP_sha256.restype = vp
    libcrypto.EVP_sha256.argtypes = []
    return libcrypto.EVP_aes_256_cbc(), libcrypto.EVP_sha256()


def _ctx_pointer(context: ssl.SSLContext) -> int:
    """The C{SSL_CTX *} of C{context} (CPython: the field after C{PyObject_HEAD})."""
    return ctypes.c_void_p.from_address(id(context) + object.__basicsize__).value or 0


def _loaded(name: str) -> Optional[str]:
    """The path of the loaded shared library C{name}.so.* of this process, if any."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.rstrip("\n").split(None, 5)[-1]
                if os.path.basename(path).startswith(name + ".so"):
                    return path
    except OSError:
        pass
    return None


def _probe() -> _OpenSSL:
    """L{_OpenSSL} when every check of the module docstring holds, else RuntimeError."""
    ssl_path, crypto_path = _loaded("libssl"), _loaded("libcrypto")
    if ssl_path is None or crypto_path is None:
        raise RuntimeError("the libssl of Python's ssl module was not found in "
                           "/proc/self/maps (statically linked?)")
    libssl, libcrypto = ctypes.CDLL(ssl_path), ctypes.CDLL(crypto_path)
    libssl.OpenSSL_version_num.restype = ctypes.c_ulong
    if libssl.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER:
        raise RuntimeError(f"{ssl_path} is not the OpenSSL of Python's ssl module")
    lib = _OpenSSL(libssl, libcrypto)
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for options in (probe.options | ssl.OP_NO_TICKET | ssl.OP_CIPHER_SERVER_PREFERENCE,
                    probe.options & ~ssl.OP_NO_TICKET & ~ssl.OP_CIPHER_SERVER_PREFERENCE):
        probe.options = options
        if lib.libssl.SSL_CTX_get_options(_ctx_pointer(probe)) != int(probe.options):
            raise RuntimeError("the SSL_CTX of an ssl.SSLContext is not where expected")
    return lib


_lib: Optional[_OpenSSL] = None
_unavailable: Optional[str] = None


def install(context: ssl.SSLContext) -> bool:
    """
    Make C{context} issue and accept tickets with this process's key set
    (L{current_keys}).  False (one warning line per process) when this Python
    or OpenSSL does not allow it safely: the context keeps its own key.
    """
    global _lib, _unavailable
    if _unavailable is not None:
        return False
    if _lib is None:
        try:
            _lib = _probe()
        except Exception as e:
            _unavailable = str(e) or e.__class__.__name__
            log.warn("TLS session tickets: each process keeps OpenSSL's own random key "
                     "(not shared between worker processes, not rotated, lost on a "
                     "certificate reload): {why}", why=_unavailable)
            return False
    lib = _lib
    try:
        pointer = _ctx_pointer(context)
        if not pointer or lib.libssl.SSL_CTX_get_options(pointer) != int(context.options):
            raise RuntimeError("the SSL_CTX of an ssl.SSLContext is not where expected")
        if lib.libssl.SSL_CTX_callback_ctrl(
                pointer, _SET_TICKET_KEY_CB,
                ctypes.cast(lib.callback, ctypes.c_void_p).value) != 1:
            raise RuntimeError("OpenSSL refused the ticket key callback")
    except Exception as e:
        _unavailable = str(e)
        log.warn("TLS session tickets: OpenSSL's own per-context key from now on: {why}",
                 why=_unavailable)
        return False
    current_keys()
    return True


# -- the control process: generate, rotate, read the file --------------------------------


class TicketKeyService(Service):
    """
    Owns the key set: read from C{key_file} (re-read by L{reload}; a damaged
    file keeps the current keys, an error line) or generated at start and
    rotated every C{rotation} seconds (0: never), C{kept} previous keys
    staying for decryption.  Every change is applied to this process
    (L{set_keys}) and given to C{publish} (the worker pool's).
    """

    def __init__(self, clock, key_file: str = "", rotation: float = 3600.0, kept: int = 2,
                 publish: Optional[Callable[[KeySet], None]] = None) -> None:
        self.clock = clock
        self.key_file = key_file
        self.rotation = rotation
        self.kept = kept
        self.publish = publish
        self.keys: Optional[KeySet] = None
        self._rotate = LoopingCall(self.rotate)
        self._rotate.clock = clock

    def _apply(self, keys: KeySet) -> None:
        self.keys = keys
        set_keys(keys)
        if self.publish is not None:
            self.publish(keys)

    def startService(self) -> None:
        super().startService()
        if self.key_file:
            try:
                self._apply(load_key_file(self.key_file))
                return
            except (OSError, ValueError) as e:  # --check refuses it; never stop the service
                log.error("TLS session ticket keys: {error}; generated keys instead",
                          error=e)
        self._apply(KeySet.generate())
        if self.rotation > 0 and not self.key_file:
            self._rotate.start(self.rotation, now=False)

    def stopService(self) -> None:
        if self._rotate.running:
            self._rotate.stop()
        return super().stopService()

    def rotate(self) -> None:
        """A new encryption key now; the oldest beyond C{kept} is dropped."""
        self._apply((self.keys or KeySet.generate()).rotated(self.kept))

    def reload(self) -> bool:
        """Re-read the key file (if any); True when the keys changed."""
        if not self.key_file:
            return False
        try:
            keys = load_key_file(self.key_file)
        except (OSError, ValueError) as e:
            log.error("TLS session ticket keys not reloaded, the current ones stay: {error}",
                      error=e)
            return False
        if self.keys is not None and keys.keys == self.keys.keys:
            return False
        self._apply(keys)
        log.info("TLS session ticket keys reloaded from {path} ({n} keys)",
                 path=self.key_file, n=len(keys.keys))
        return True
