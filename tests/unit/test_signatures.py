from __future__ import annotations

from pathlib import Path

import pytest
from starlette.datastructures import Headers

from service import signatures
from service.errors import InvalidSignature

# The verified vector from the reference (§1.3): secret "secret" over these exact bytes.
VECTOR_BODY = (
    Path(__file__).parent.parent / "payloads" / "signature_vector_body.json"
).read_bytes()
VECTOR_SHA1 = "033c62f40f687675f17f0f41f91a40c71c0f134c"
VECTOR_SHA256 = "6d3320c60b11101395b7fc8f9068748808a0aa1bfa064438e39d1bc2c7d74d99"


def test_sign_reproduces_the_published_vector_for_both_algorithms() -> None:
    assert signatures.sign(VECTOR_BODY, "secret") == {
        "Agora-Signature-V2": VECTOR_SHA256,
        "Agora-Signature": VECTOR_SHA1,
    }


@pytest.mark.parametrize(
    "headers",
    [
        {"Agora-Signature-V2": VECTOR_SHA256},  # SHA256 alone
        {"Agora-Signature": VECTOR_SHA1},  # SHA1 alone
        {
            "Agora-Signature-V2": VECTOR_SHA256,
            "Agora-Signature": VECTOR_SHA1,
        },  # both, as Agora sends
        {"agora-signature-v2": VECTOR_SHA256.upper()},  # header names and hex case do not matter
        {"Agora-Signature": f"  {VECTOR_SHA1}  "},  # surrounding whitespace is ignored
    ],
)
def test_the_vector_verifies(headers: dict[str, str]) -> None:
    signatures.verify(VECTOR_BODY, Headers(headers), ["secret"])


@pytest.mark.parametrize(
    ("headers", "secrets"),
    [
        ({}, ["secret"]),  # no signature header at all
        ({"Agora-Signature-V2": VECTOR_SHA256}, ["other"]),  # wrong secret
        ({"Agora-Signature-V2": VECTOR_SHA256}, []),  # no secret configured: fail closed
        ({"Agora-Signature-V2": VECTOR_SHA1}, ["secret"]),  # SHA1 digest in the SHA256 header
        (
            {"Agora-Signature-V2": "0" * 64, "Agora-Signature": VECTOR_SHA1},
            ["secret"],
        ),  # V2 present decides
        ({"Agora-Signature-V2": f"sha256={VECTOR_SHA256}"}, ["secret"]),  # no prefixes
        ({"Agora-Signature-V2": "é" * 64}, ["secret"]),  # non-ASCII garbage
    ],
)
def test_bad_signatures_are_refused(headers: dict[str, str], secrets: list[str]) -> None:
    with pytest.raises(InvalidSignature):
        signatures.verify(VECTOR_BODY, Headers(headers), secrets)


def test_any_configured_secret_verifies_during_rotation() -> None:
    signatures.verify(
        VECTOR_BODY, Headers({"Agora-Signature-V2": VECTOR_SHA256}), ["new", "secret"]
    )


def test_one_changed_byte_breaks_the_signature() -> None:
    tampered = VECTOR_BODY.replace(b'"b":2', b'"b":3')
    with pytest.raises(InvalidSignature):
        signatures.verify(tampered, Headers({"Agora-Signature-V2": VECTOR_SHA256}), ["secret"])


def test_reserialised_json_does_not_verify() -> None:
    import json

    respaced = json.dumps(json.loads(VECTOR_BODY)).encode()
    with pytest.raises(InvalidSignature):
        signatures.verify(respaced, Headers({"Agora-Signature-V2": VECTOR_SHA256}), ["secret"])
