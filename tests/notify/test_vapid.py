"""The VAPID key pair: made once, kept 0600, the same after a restart."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from notify.vapid import KEY_FILE_NAME, VapidKeyError, VapidKeys


def test_a_key_pair_is_made_on_first_start_with_mode_0600(tmp_path: Path) -> None:
    keys = VapidKeys.load_or_create(tmp_path / "data")
    path = tmp_path / "data" / KEY_FILE_NAME
    assert keys.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == [KEY_FILE_NAME]  # no temporary file left


def test_the_public_key_is_base64url_of_the_uncompressed_point(tmp_path: Path) -> None:
    public = VapidKeys.load_or_create(tmp_path).public_key
    assert "=" not in public and "+" not in public and "/" not in public
    point = base64.urlsafe_b64decode(public + "=" * (-len(public) % 4))
    assert len(point) == 65 and point[0] == 4
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)


def test_the_same_key_is_loaded_again(tmp_path: Path) -> None:
    assert VapidKeys.load_or_create(tmp_path).public_key == VapidKeys.load_or_create(tmp_path).public_key


def test_the_mode_is_kept_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        VapidKeys.load_or_create(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / KEY_FILE_NAME).stat().st_mode) == 0o600


def test_a_key_file_readable_by_others_is_tightened(tmp_path: Path) -> None:
    public = VapidKeys.load_or_create(tmp_path).public_key
    (tmp_path / KEY_FILE_NAME).chmod(0o644)
    assert VapidKeys.load_or_create(tmp_path).public_key == public
    assert stat.S_IMODE((tmp_path / KEY_FILE_NAME).stat().st_mode) == 0o600


def test_a_broken_key_file_stops_the_start_instead_of_being_replaced(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE_NAME
    path.write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    with pytest.raises(VapidKeyError):
        VapidKeys.load_or_create(tmp_path)
    assert b"garbage" in path.read_bytes()
