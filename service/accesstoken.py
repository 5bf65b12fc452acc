"""Agora AccessToken2 ("007" tokens) for `Authorization: agora token=…` REST calls (pure).

Agora's REST API accepts, instead of HTTP Basic, a token signed with the project's App Certificate
carrying RTC and RTM privileges (docs: "RESTful authentication", token authentication). The format
is Agora's AccessToken2 as published in AgoraIO/Tools `DynamicKey/AgoraDynamicKey/python3`
(`AccessToken2.py`); `tests/unit/test_accesstoken.py` checks `build` against that repository's
own test vectors.

    token     = "007" + base64(zlib(string(signature) + signing_info))
    signing   = HMAC256(key=uint32(salt), HMAC256(key=uint32(issued_at), certificate))
    signature = HMAC256(key=signing, signing_info)
    signing_info = string(app_id) uint32(issued_at) uint32(expire) uint32(salt) uint16(n) service*
    service   = uint16(type) map(privilege → expire) + fields (RTC: channel, account; RTM: user id)

Integers are little-endian; `string` is a uint16 length then the bytes; `map` is a uint16 count then
sorted (uint16 key, uint32 value) pairs. Expiries are seconds from `issued_at`.

`parse` and `verify` are the other direction; the simulator uses them to check what we send.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

VERSION: Final = "007"

SERVICE_RTC: Final = 1
SERVICE_RTM: Final = 2

# RTC privileges; RTM has only "login" (1).
JOIN_CHANNEL: Final = 1
PUBLISH_AUDIO: Final = 2
PUBLISH_VIDEO: Final = 3
PUBLISH_DATA: Final = 4
RTM_LOGIN: Final = 1

# Agora caps a token's lifetime at 24 hours.
MAX_EXPIRE_S: Final = 86_400


class InvalidToken(ValueError):
    """The token is not a well-formed AccessToken2."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """One service in a token: RTC (`name` = channel, `account` = uid) or RTM (`account` = user)."""

    kind: int
    privileges: Mapping[int, int] = field(default_factory=dict)
    name: str = ""
    account: str = ""

    def pack(self) -> bytes:
        packed = _u16(self.kind) + _map(self.privileges)
        if self.kind == SERVICE_RTC:
            return packed + _string(self.name.encode()) + _string(self.account.encode())
        if self.kind == SERVICE_RTM:
            return packed + _string(self.account.encode())
        raise ValueError(f"service type {self.kind} is not supported")


@dataclass(frozen=True, slots=True, kw_only=True)
class Token:
    """A parsed token; `signature` is what it carries, checked by `verify`."""

    app_id: str
    issued_at: int
    expire_s: int
    salt: int
    services: tuple[Service, ...]
    signature: bytes
    signing_info: bytes


def build(
    *,
    app_id: str,
    certificate: str,
    services: tuple[Service, ...],
    issued_at: int,
    expire_s: int,
    salt: int | None = None,
) -> str:
    """A signed AccessToken2; `salt` is random unless given (tests pin it)."""
    if not services:
        raise ValueError("a token needs at least one service")
    salt = salt if salt is not None else secrets.randbelow(99_999_999) + 1
    info = (
        _string(app_id.encode())
        + _u32(issued_at)
        + _u32(expire_s)
        + _u32(salt)
        + _u16(len(services))
        + b"".join(s.pack() for s in sorted(services, key=lambda s: s.kind))
    )
    signature = hmac.new(_signing_key(certificate, issued_at, salt), info, hashlib.sha256).digest()
    return VERSION + base64.b64encode(zlib.compress(_string(signature) + info)).decode("ascii")


def convoai(
    *,
    app_id: str,
    certificate: str,
    channel: str,
    account: str,
    issued_at: int,
    expire_s: int = 600,
    salt: int | None = None,
) -> str:
    """The token Agora's ConvoAI REST API takes: RTC join + publish privileges and RTM login.

    Mirrors the official SDK's `generate_convo_ai_token` (publisher role, the RTM user is the RTC
    account); we mint one per call with a short `expire_s`.
    """
    expire_s = min(expire_s, MAX_EXPIRE_S)
    rtc = {p: expire_s for p in (JOIN_CHANNEL, PUBLISH_AUDIO, PUBLISH_VIDEO, PUBLISH_DATA)}
    return build(
        app_id=app_id,
        certificate=certificate,
        services=(
            Service(kind=SERVICE_RTC, privileges=rtc, name=channel, account=account),
            Service(kind=SERVICE_RTM, privileges={RTM_LOGIN: expire_s}, account=account),
        ),
        issued_at=issued_at,
        expire_s=expire_s,
        salt=salt,
    )


def parse(token: str) -> Token:
    """Decode a token without checking its signature; raise `InvalidToken`."""
    if not token.startswith(VERSION):
        raise InvalidToken("not an AccessToken2 (version 007)")
    try:
        raw = zlib.decompress(base64.b64decode(token[len(VERSION) :], validate=True))
        reader = _Reader(raw)
        signature = reader.string()
        info_start = reader.offset
        app_id = reader.string().decode()
        issued_at, expire_s, salt = reader.u32(), reader.u32(), reader.u32()
        services = tuple(reader.service() for _ in range(reader.u16()))
    except (ValueError, zlib.error, struct.error, UnicodeDecodeError) as exc:
        raise InvalidToken(f"malformed token ({type(exc).__name__})") from None
    return Token(
        app_id=app_id,
        issued_at=issued_at,
        expire_s=expire_s,
        salt=salt,
        services=services,
        signature=signature,
        signing_info=raw[info_start:],
    )


def verify(token: Token, certificate: str) -> bool:
    """Whether `token` was signed with `certificate` (constant-time compare)."""
    key = _signing_key(certificate, token.issued_at, token.salt)
    expected = hmac.new(key, token.signing_info, hashlib.sha256).digest()
    return hmac.compare_digest(expected, token.signature)


def _signing_key(certificate: str, issued_at: int, salt: int) -> bytes:
    first = hmac.new(_u32(issued_at), certificate.encode(), hashlib.sha256).digest()
    return hmac.new(_u32(salt), first, hashlib.sha256).digest()


def _u16(value: int) -> bytes:
    return struct.pack("<H", value)


def _u32(value: int) -> bytes:
    return struct.pack("<I", value)


def _string(value: bytes) -> bytes:
    return _u16(len(value)) + value


def _map(privileges: Mapping[int, int]) -> bytes:
    return _u16(len(privileges)) + b"".join(
        _u16(key) + _u32(privileges[key]) for key in sorted(privileges)
    )


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.offset = data, 0

    def _take(self, size: int) -> bytes:
        if self.offset + size > len(self.data):
            raise ValueError("token is truncated")
        chunk = self.data[self.offset : self.offset + size]
        self.offset += size
        return chunk

    def u16(self) -> int:
        value: int = struct.unpack("<H", self._take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack("<I", self._take(4))[0]
        return value

    def string(self) -> bytes:
        return self._take(self.u16())

    def service(self) -> Service:
        kind = self.u16()
        privileges = {self.u16(): self.u32() for _ in range(self.u16())}
        if kind == SERVICE_RTC:
            name, account = self.string().decode(), self.string().decode()
            return Service(kind=kind, privileges=privileges, name=name, account=account)
        if kind == SERVICE_RTM:
            return Service(kind=kind, privileges=privileges, account=self.string().decode())
        raise ValueError(f"service type {kind} is not supported")
