"""The server's VAPID key pair (RFC 8292): made on first start, kept under the data directory.

The private key is a PKCS#8 PEM file readable by its owner only (mode 0600).
It is written to a temporary file first and linked into place, so a crash
never leaves half a key and two processes starting at once agree on one key.
Losing the key would silently orphan every browser's subscription, so a key
file that cannot be read stops the start instead of being replaced.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02

from notify.subscriptions import encode_base64url

log = logging.getLogger("chime.push")

KEY_FILE_NAME = "vapid_private_key.pem"
KEY_FILE_MODE = 0o600


class VapidKeyError(RuntimeError):
    """The key file exists but cannot be used; the message says what to fix."""


class VapidKeys:
    """The key pair that signs every push; ``public_key`` is what ``pushManager.subscribe`` takes."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey, path: Path):
        self.path = path
        self.signer = Vapid02(private_key)
        point = private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
        self.public_key = encode_base64url(point)

    @classmethod
    def load_or_create(cls, data_dir: Path) -> VapidKeys:
        path = Path(data_dir) / KEY_FILE_NAME
        if not path.exists():
            _create(path)
        return cls(_load(path), path)

    @classmethod
    def from_pem(cls, pem: bytes, source: str = "Redis") -> VapidKeys:
        """The pair from a PEM kept elsewhere (with Redis: the one every process agreed on)."""
        return cls(_parse(pem, source), Path(source))


def new_private_key_pem() -> bytes:
    """A new P-256 private key, PKCS#8 PEM."""
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _create(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = new_private_key_pem()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    try:
        with os.fdopen(descriptor, "wb") as file:
            os.fchmod(file.fileno(), KEY_FILE_MODE)  # whatever the umask
            file.write(pem)
            file.flush()
            os.fsync(file.fileno())
        os.link(temporary, path)
        log.info("made a new VAPID key pair in %s", path)
    except FileExistsError:
        pass  # another process made it first: use theirs
    finally:
        temporary.unlink(missing_ok=True)


def _load(path: Path) -> ec.EllipticCurvePrivateKey:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode != KEY_FILE_MODE:
        log.warning("%s had mode %o; setting it to %o", path, mode, KEY_FILE_MODE)
        path.chmod(KEY_FILE_MODE)
    return _parse(path.read_bytes(), str(path))


def _parse(pem: bytes, source: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise VapidKeyError(f"{source} is not a readable private key ({exc}); restore it from a "
                            "backup, or delete it to make a new one (browsers must subscribe again)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise VapidKeyError(f"{source} must hold a P-256 (prime256v1) private key")
    return key
