from __future__ import annotations

import pytest

from service import accesstoken

# Agora's own test vectors (AgoraIO/Tools, DynamicKey/AgoraDynamicKey/python3/test/AccessToken2Test.py).
APP_ID = "970CA35de60c44645bbae8a215061b33"
CERTIFICATE = "5CFd2fd1755d40ecb72977518be15d3b"
CHANNEL = "7d72365eb983485397e3e3f9d460bdda"


@pytest.mark.parametrize(
    ("account", "expected"),
    [
        # test_service_rtc: uid 2882341273
        (
            "2882341273",
            "007eJxTYBBbsMMnKq7p9Hf/HcIX5kce9b518kCiQgSr5Zrp4X1Tu6UUGCzNDZwdjU1TUs0Mkk1MzExMk5ISUy0SjQxNDcw"
            "Mk4yN3b8IMEQwMTAwMoAwBIL4CgzmKeZGxmamqUmWFsYmFqbGluapxqnGaZYpJmYGSSkpiVwMRhYWRsYmhkbmxgDCaiTj",
        ),
        # test_service_rtc_uid_0: uid 0 is packed as an empty account
        (
            "",
            "007eJxTYLhzZP08Lxa1Pg57+TcXb/3cZ3wi4V6kbpbOog0G2dOYk20UGCzNDZwdjU1TUs0Mkk1MzExMk5ISUy0SjQxNDcw"
            "Mk4yN3b8IMEQwMTAwMoAwBIL4CgzmKeZGxmamqUmWFsYmFqbGluapxqnGaZYpJmYGSSkpiQwMADacImo=",
        ),
    ],
)
def test_tokens_match_agoras_published_vectors(account: str, expected: str) -> None:
    service = accesstoken.Service(
        kind=accesstoken.SERVICE_RTC,
        privileges={accesstoken.JOIN_CHANNEL: 600},
        name=CHANNEL,
        account=account,
    )
    token = accesstoken.build(
        app_id=APP_ID,
        certificate=CERTIFICATE,
        services=(service,),
        issued_at=1111111,
        expire_s=600,
        salt=1,
    )
    assert token == expected


def test_a_convoai_token_carries_rtc_and_rtm_privileges_and_verifies() -> None:
    token = accesstoken.convoai(
        app_id=APP_ID,
        certificate=CERTIFICATE,
        channel="sess-1",
        account="0",
        issued_at=1_800_000_000,
    )
    parsed = accesstoken.parse(token)
    assert (parsed.app_id, parsed.issued_at, parsed.expire_s) == (APP_ID, 1_800_000_000, 600)
    rtc, rtm = parsed.services
    assert (rtc.kind, rtc.name, rtc.account) == (accesstoken.SERVICE_RTC, "sess-1", "0")
    assert dict(rtc.privileges) == {1: 600, 2: 600, 3: 600, 4: 600}
    assert (rtm.kind, rtm.account, dict(rtm.privileges)) == (accesstoken.SERVICE_RTM, "0", {1: 600})
    assert accesstoken.verify(parsed, CERTIFICATE)
    assert not accesstoken.verify(parsed, "0" * 32)


def test_lifetimes_are_capped_at_a_day() -> None:
    token = accesstoken.convoai(
        app_id=APP_ID,
        certificate=CERTIFICATE,
        channel="c",
        account="1",
        issued_at=1,
        expire_s=10**6,
    )
    assert accesstoken.parse(token).expire_s == accesstoken.MAX_EXPIRE_S


@pytest.mark.parametrize("token", ["", "006abc", "007not-base64!", "007" + "QUJD"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(accesstoken.InvalidToken):
        accesstoken.parse(token)
