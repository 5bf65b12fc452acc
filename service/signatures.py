"""Agora NCS webhook signatures (pure: no I/O, no clock).

Agora signs the raw request body with the Console secret (its UTF-8 bytes) and sends both
`Agora-Signature-V2` (HMAC-SHA256) and `Agora-Signature` (HMAC-SHA1), each a lowercase hex
digest with no prefix. We verify the bytes exactly as received, before any JSON parsing: a
re-serialised body changes key order and spacing and never verifies.

Rules (CONTRACT §3): when `Agora-Signature-V2` is present only SHA256 counts; otherwise
`Agora-Signature` is checked with SHA1. Any configured secret may match (rotation). No secret
configured means nothing verifies (fail closed). Comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from typing import Final

from service.errors import InvalidSignature

SHA256_HEADER: Final = "Agora-Signature-V2"
SHA1_HEADER: Final = "Agora-Signature"


def sign(body: bytes, secret: str) -> dict[str, str]:
    """The two headers Agora would send for `body`; used by the simulator and tests."""
    key = secret.encode("utf-8")
    return {
        SHA256_HEADER: hmac.new(key, body, hashlib.sha256).hexdigest(),
        SHA1_HEADER: hmac.new(key, body, hashlib.sha1).hexdigest(),
    }


def verify(body: bytes, headers: Mapping[str, str], secrets: Iterable[str]) -> None:
    """Raise `InvalidSignature` unless a header carries the HMAC of `body` under some secret.

    `headers` must look names up case-insensitively (Starlette's `Headers` does).
    """
    received = headers.get(SHA256_HEADER)
    algorithm = hashlib.sha256
    if received is None:
        received = headers.get(SHA1_HEADER)
        algorithm = hashlib.sha1
    if received is None:
        raise InvalidSignature("no Agora-Signature-V2 or Agora-Signature header")
    candidate = received.strip().lower().encode("utf-8", "replace")
    matched = False
    for secret in secrets:
        expected = hmac.new(secret.encode("utf-8"), body, algorithm).hexdigest().encode("ascii")
        # No early exit: every secret is tried so timing does not reveal which one matched.
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise InvalidSignature("signature does not match")
