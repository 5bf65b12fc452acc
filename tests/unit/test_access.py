"""Which apps a bearer token may see, and whether it may erase: `access.grant_for`."""

from __future__ import annotations

from pathlib import Path

import pytest

from service import access, config
from service.errors import NotFound

APPS = """
[[apps]]
app_id = "alpha"
webhook_secrets = ["s"]
read_tokens = ["alpha-reader", "shared-reader"]

[[apps]]
app_id = "beta"
webhook_secrets = ["s"]
read_tokens = ["beta-reader", "shared-reader"]

[[apps]]
app_id = "gamma"
webhook_secrets = ["s"]
"""


@pytest.fixture
def settings(tmp_path: Path) -> config.Settings:
    apps_file = tmp_path / "apps.toml"
    apps_file.write_text(APPS)
    return config.load(
        {
            "LEDGER_APPS_FILE": str(apps_file),
            "READ_API_TOKENS": "global-1,global-2",
            "ADMIN_API_TOKENS": "admin-1,admin-2,global-2",
        }
    )


@pytest.mark.parametrize(
    ("token", "apps", "admin", "who"),
    [
        # A read token sees every configured app and may not erase.
        ("global-1", {"alpha", "beta", "gamma"}, False, "read_token=1"),
        # An admin token reads like a read token and may erase; named by its place in its list.
        ("admin-2", {"alpha", "beta", "gamma"}, True, "admin_token=2"),
        # Listed as both read and admin token: an admin, named as one.
        ("global-2", {"alpha", "beta", "gamma"}, True, "admin_token=3"),
        # An app's read token sees that app only.
        ("alpha-reader", {"alpha"}, False, "app_token=alpha#1"),
        ("beta-reader", {"beta"}, False, "app_token=beta#1"),
        # A token in two apps' read_tokens sees both.
        ("shared-reader", {"alpha", "beta"}, False, "app_token=alpha#2"),
    ],
)
def test_each_kind_of_token_sees_what_its_place_grants(
    settings: config.Settings, token: str, apps: set[str], admin: bool, who: str
) -> None:
    grant = access.grant_for(settings, token)
    assert grant is not None
    assert (set(grant.app_ids), grant.admin, grant.who) == (apps, admin, who)
    assert grant.apps == sorted(apps)


@pytest.mark.parametrize(
    "token", ["", "nobody", "global", "global-1 ", "GLOBAL-1", "alpha-reader\x00", "admin-"]
)
def test_anything_but_a_configured_token_is_refused(settings: config.Settings, token: str) -> None:
    assert access.grant_for(settings, token) is None


def test_a_scoped_grant_answers_other_apps_as_unknown(settings: config.Settings) -> None:
    grant = access.grant_for(settings, "alpha-reader")
    assert grant is not None
    assert grant.require_app("alpha") == "alpha"
    for other in ("beta", "gamma", "no-such-app"):
        assert not grant.sees(other)
        with pytest.raises(NotFound) as raised:
            grant.require_app(other)
        assert raised.value.status_hint == 404 and raised.value.code == "not_found"


def test_the_who_of_a_grant_never_holds_the_token(settings: config.Settings) -> None:
    for token in ("global-1", "admin-1", "alpha-reader", "shared-reader"):
        grant = access.grant_for(settings, token)
        assert grant is not None and token not in grant.who


def test_no_tokens_configured_refuses_everyone() -> None:
    settings = config.load({"AGORA_APP_ID": "a", "AGORA_WEBHOOK_SECRETS": "s"})
    assert access.grant_for(settings, "") is None
    assert access.grant_for(settings, "anything") is None
