"""REST credentials: which apps have them, and the header their calls carry."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from service import accesstoken, config, credentials

CERTIFICATE = "5CFd2fd1755d40ecb72977518be15d3b"


def settings(tmp_path: Path) -> config.Settings:
    apps = tmp_path / "apps.toml"
    apps.write_text(
        "[[apps]]\napp_id = 'basic'\nwebhook_secrets = ['s']\ncustomer_id = 'cid'\ncustomer_secret = 'csecret'\n"
        f"[[apps]]\napp_id = 'certified'\nwebhook_secrets = ['s']\napp_certificate = '{CERTIFICATE}'\n"
        "[[apps]]\napp_id = 'webhooks-only'\nwebhook_secrets = ['s']\n"
    )
    return config.load(
        {"LEDGER_APPS_FILE": str(apps), "AGORA_APP_ID": "bare", "AGORA_WEBHOOK_SECRETS": "s"}
    )


def test_apps_without_a_certificate_or_a_customer_pair_are_listed_as_missing(
    tmp_path: Path,
) -> None:
    assert credentials.missing(settings(tmp_path)) == ["bare", "webhooks-only"]


def test_basic_is_used_without_a_certificate_and_a_fresh_token_with_one(tmp_path: Path) -> None:
    apps = settings(tmp_path).apps
    basic = credentials.Signer(apps["basic"]).authorization(channel=None)
    assert basic == "Basic " + base64.b64encode(b"cid:csecret").decode()
    header = credentials.Signer(apps["certified"], clock=lambda: 1_800_000_000).authorization(
        channel="room"
    )
    token = accesstoken.parse(header.removeprefix("agora token="))
    assert (token.app_id, token.issued_at) == ("certified", 1_800_000_000)
    assert accesstoken.verify(token, CERTIFICATE)


def test_an_app_without_credentials_cannot_sign(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no REST credentials"):
        credentials.Signer(settings(tmp_path).apps["bare"])
