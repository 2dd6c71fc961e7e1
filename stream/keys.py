"""CurveZMQ key files: ``NAME.key`` (public, share it) and ``NAME.key_secret`` (keep it).

The files are ZeroMQ's own certificate format (zmq.auth), so keys made by other ZeroMQ tools work.
"""

from __future__ import annotations

import os
from pathlib import Path

from engines.errors import SegstreamError


class KeyError_(SegstreamError):
    """A key file is missing, unreadable or of the wrong kind."""


def generate(directory: str | Path, name: str = "server") -> tuple[Path, Path]:
    """Write a new key pair; returns (public_file, secret_file). Refuses to overwrite a key pair."""
    import zmq.auth

    if not name or "/" in name or name.startswith("."):
        raise KeyError_(f"key name {name!r} must be a plain file name")
    directory = Path(directory)
    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    for p in (public, secret):
        if p.exists():
            raise KeyError_(f"{p} already exists (choose another --name or remove it)")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        pub, sec = zmq.auth.create_certificates(directory, name)
        os.chmod(sec, 0o600)
    except OSError as e:
        raise KeyError_(f"cannot write keys into {directory}: {e.strerror}") from None
    return Path(pub), Path(sec)


def _load(path: str | Path) -> tuple[bytes, bytes | None]:
    import zmq.auth

    path = Path(path)
    if not path.is_file():
        raise KeyError_(f"key file not found: {path}")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError, KeyError) as e:
        raise KeyError_(f"{path} is not a ZeroMQ certificate file ({e})") from None
    if not public or len(public) != 40:
        raise KeyError_(f"{path} has no valid public key")
    return public, secret


def load_secret(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``*.key_secret`` file."""
    public, secret = _load(path)
    if not secret or len(secret) != 40:
        raise KeyError_(f"{path} holds no secret key (pass the .key_secret file, not the .key file)")
    return public, secret


def load_public(path: str | Path) -> bytes:
    """The Z85 public key from a ``*.key`` or ``*.key_secret`` file."""
    return _load(path)[0]


def check_public_dir(directory: str | Path) -> Path:
    """The folder of allowed client public keys must exist and hold at least one ``*.key``."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyError_(f"allowed-keys folder not found: {directory}")
    if not any(directory.glob("*.key")):
        raise KeyError_(f"allowed-keys folder {directory} holds no *.key public key files")
    return directory
