"""Credentials out of everything segstream shows: one function for log lines, stats files, headers, pages.

A camera URL often carries its password (``rtsp://admin:secret@cam/stream``) or a token in its query
(``?token=...``). ``redact(text)`` returns ``text`` with every URL password and every value of a
credential-like query key replaced by ``***``; the user name, host, path and other options stay, so the
line still says which camera it is about. It works on whole lines too (any URL inside is redacted), so
messages that quote a URL -- FFmpeg's errors do -- can be passed through it as they are.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@ -- the password ends at the last '@' before the host (a password may hold '@'
# only percent-encoded, but users paste raw ones: take everything up to the '@' that precedes the path)
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^\s/@:?#]*):(?P<password>[^\s/?#]*)@")
# query keys whose value is a secret (matched case-insensitively, whole key)
_SECRET_KEYS = (
    "password|passwd|pass|pwd|secret|token|access_token|auth|authorization|key|api_key|apikey|"
    "signature|sig|credential|credentials"
)
_QUERY = re.compile(rf"(?P<head>[?&](?:{_SECRET_KEYS})=)(?P<value>[^&\s#'\"]*)", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with URL passwords and credential-like query values replaced by ``***``."""
    if not text:
        return text
    out = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}" if m["value"] else m[0], out)


def secrets_of(url: str) -> list[str]:
    """The secret strings in ``url`` (password, credential query values): what must never be shown.
    Tests grep outputs for these; a caller can also scrub text that did not come from a URL."""
    found = [m["password"] for m in _USERINFO.finditer(url) if m["password"]]
    found += [m["value"] for m in _QUERY.finditer(url) if m["value"]]
    return found
