from __future__ import annotations

from pathlib import Path

import pytest

from service import config, pcu
from service.errors import ConfigError


def test_defaults_follow_the_contract() -> None:
    settings = config.load({})
    assert settings.database_url is None
    assert settings.apps == {}
    assert settings.agora_api_base_url == "https://api.agora.io/api/conversational-ai-agent"
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert (settings.log_level, settings.log_format) == ("info", "json")
    assert (settings.reconcile_interval_s, settings.history_grace_s) == (60.0, 600.0)
    assert (settings.reconcile_grace_s, settings.reconcile_watchdog_margin_s) == (60.0, 3600.0)
    assert settings.notification_retention_days == 30
    assert (settings.shutdown_drain_s, settings.shutdown_timeout_s) == (5.0, 20)
    assert settings.database_timeout_s == 5.0


def test_retention_and_shutdown_periods_are_read_from_the_environment() -> None:
    settings = config.load(
        {"NOTIFICATION_RETENTION_DAYS": "0", "SHUTDOWN_DRAIN_S": "0", "SHUTDOWN_TIMEOUT_S": "3"}
    )
    assert settings.notification_retention_days == 0
    assert (settings.shutdown_drain_s, settings.shutdown_timeout_s) == (0.0, 3)


def test_one_app_from_the_environment() -> None:
    settings = config.load(
        {
            "AGORA_APP_ID": "app1",
            "AGORA_WEBHOOK_SECRETS": "old, new",
            "AGORA_CUSTOMER_ID": "cid",
            "AGORA_CUSTOMER_SECRET": "csecret",
            "PCU_CAP": "50",
            "READ_API_TOKENS": "t1,t2",
            "DATABASE_URL": "postgres://u:p@db:5432/ledger",
        }
    )
    app = settings.apps["app1"]
    assert [str(s) for s in app.webhook_secrets] == ["old", "new"]
    assert (app.customer_id, str(app.customer_secret), app.pcu_cap) == ("cid", "csecret", 50)
    assert [str(t) for t in settings.read_api_tokens] == ["t1", "t2"]
    assert settings.sqlalchemy_url == "postgresql+psycopg://u:p@db:5432/ledger"


def test_secrets_never_show_in_repr() -> None:
    settings = config.load(
        {
            "AGORA_APP_ID": "app1",
            "AGORA_WEBHOOK_SECRETS": "hush-webhook",
            "AGORA_CUSTOMER_ID": "cid",
            "AGORA_CUSTOMER_SECRET": "hush-customer",
            "AGORA_APP_CERTIFICATE": "hush-cert",
            "READ_API_TOKENS": "hush-token",
            "DATABASE_URL": "postgresql://u:hush-db@h/d",
        }
    )
    text = repr(settings)
    for secret in ("hush-webhook", "hush-customer", "hush-cert", "hush-token", "hush-db"):
        assert secret not in text


def test_several_apps_from_a_file_plus_one_from_the_environment(tmp_path: Path) -> None:
    apps_file = tmp_path / "apps.toml"
    apps_file.write_text(
        """
[[apps]]
app_id = "a1"
webhook_secrets = ["s1", "s1b"]
customer_id = "c1"
customer_secret = "cs1"
pcu_cap = 5

[[apps]]
app_id = "a2"
webhook_secrets = "s2"
"""
    )
    settings = config.load(
        {"LEDGER_APPS_FILE": str(apps_file), "AGORA_APP_ID": "a3", "AGORA_WEBHOOK_SECRETS": "s3"}
    )
    assert sorted(settings.apps) == ["a1", "a2", "a3"]
    assert settings.apps["a1"].pcu_cap == 5
    assert settings.apps["a2"].pcu_cap == 20
    assert [str(s) for s in settings.apps["a2"].webhook_secrets] == ["s2"]


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "70000"}, "PORT"),
        ({"PCU_CAP": "0", "AGORA_APP_ID": "a", "AGORA_WEBHOOK_SECRETS": "s"}, "PCU_CAP"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"RECONCILE_INTERVAL_S": "-1"}, "RECONCILE_INTERVAL_S"),
        ({"RECONCILE_GRACE_S": "a minute"}, "RECONCILE_GRACE_S"),
        ({"RECONCILE_WATCHDOG_MARGIN_S": "-60"}, "RECONCILE_WATCHDOG_MARGIN_S"),
        ({"HISTORY_GRACE_S": "soon"}, "HISTORY_GRACE_S"),
        ({"NOTIFICATION_RETENTION_DAYS": "-1"}, "NOTIFICATION_RETENTION_DAYS"),
        ({"NOTIFICATION_RETENTION_DAYS": "1.5"}, "NOTIFICATION_RETENTION_DAYS"),
        ({"SHUTDOWN_DRAIN_S": "-2"}, "SHUTDOWN_DRAIN_S"),
        ({"SHUTDOWN_TIMEOUT_S": "later"}, "SHUTDOWN_TIMEOUT_S"),
        ({"SHUTDOWN_TIMEOUT_S": "0"}, "SHUTDOWN_TIMEOUT_S"),
        ({"AGORA_API_BASE_URL": "ftp://x"}, "AGORA_API_BASE_URL"),
        ({"DATABASE_URL": "mysql://u:secretpw@h/d"}, "DATABASE_URL"),
        ({"AGORA_WEBHOOK_SECRETS": "s"}, "AGORA_WEBHOOK_SECRETS is set but AGORA_APP_ID"),
        ({"AGORA_APP_ID": "has space"}, "AGORA_APP_ID"),
        ({"AGORA_APP_ID": "a"}, "AGORA_WEBHOOK_SECRETS is required"),
        ({"AGORA_APP_ID": "a", "AGORA_WEBHOOK_SECRETS": " , "}, "AGORA_WEBHOOK_SECRETS"),
        (
            {"AGORA_APP_ID": "a", "AGORA_WEBHOOK_SECRETS": "s", "AGORA_CUSTOMER_ID": "c"},
            "AGORA_CUSTOMER_SECRET",
        ),
        ({"DATABASE_TIMEOUT_S": "0"}, "DATABASE_TIMEOUT_S"),
        ({"DATABASE_TIMEOUT_S": "soon"}, "DATABASE_TIMEOUT_S"),
        ({"LEDGER_APPS_FILE": "/nonexistent/apps.toml"}, "LEDGER_APPS_FILE"),
        ({"HISTORY_RETENTION_DAYS": "-1"}, "HISTORY_RETENTION_DAYS"),
        ({"HISTORY_RETENTION_DAYS": "a month"}, "HISTORY_RETENTION_DAYS"),
        ({"METRICS_PORT": "0"}, "METRICS_PORT"),
        ({"METRICS_PORT": "nine"}, "METRICS_PORT"),
        ({"METRICS_PORT": "8000"}, "METRICS_PORT must differ from PORT"),
        ({"METRICS_PORT": "9100", "PORT": "9100"}, "METRICS_PORT must differ from PORT"),
    ],
)
def test_bad_values_fail_naming_the_variable(env: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names) as raised:
        config.load(env)
    assert "secretpw" not in str(raised.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not toml [", "not valid TOML"),
        ("[[apps]]\nwebhook_secrets = ['s']", "#1: app_id"),
        ("[[apps]]\napp_id = 'a'\nwebhook_secrets = ['s']\npcu_cap = -1", "pcu_cap"),
        ("[[apps]]\napp_id = 'a'\ncolour = 'red'", "unknown key 'colour'"),
        (
            "[[apps]]\napp_id = 'a'\nwebhook_secrets = ['s']\ncustomer_id = 'c'",
            "customer_id and customer_secret",
        ),
        (
            "[[apps]]\napp_id = 'a'\nwebhook_secrets = 's'\n"
            "[[apps]]\napp_id = 'a'\nwebhook_secrets = 's'",
            "configured twice",
        ),
        (
            "[[apps]]\napp_id = 'a'\nwebhook_secrets = ['s']\n[[apps]]\napp_id = 'b'",
            r"\[\[apps\]\] #2 \(app_id 'b'\): webhook_secrets is required",
        ),
        ("[[apps]]\napp_id = 'a'\nwebhook_secrets = []", "#1 .*webhook_secrets is required"),
        ("[[apps]]\napp_id = 'a'\nwebhook_secrets = ['s']\nread_tokens = [1]", "read_tokens"),
        ("[[apps]]\napp_id = 'a'\nwebhook_secrets = ['s']\nread_tokens = ['']", "read_tokens"),
    ],
)
def test_bad_apps_files_fail_naming_the_entry(tmp_path: Path, content: str, message: str) -> None:
    apps_file = tmp_path / "apps.toml"
    apps_file.write_text(content)
    with pytest.raises(ConfigError, match=message):
        config.load({"LEDGER_APPS_FILE": str(apps_file)})


def test_the_environment_app_may_not_repeat_a_file_app(tmp_path: Path) -> None:
    apps_file = tmp_path / "apps.toml"
    apps_file.write_text("[[apps]]\napp_id = 'a'\nwebhook_secrets = 's'\n")
    with pytest.raises(ConfigError, match="configured twice"):
        config.load(
            {"LEDGER_APPS_FILE": str(apps_file), "AGORA_APP_ID": "a", "AGORA_WEBHOOK_SECRETS": "s"}
        )


def test_the_pcu_warning_fraction_defaults_to_four_fifths() -> None:
    settings = config.load({"AGORA_APP_ID": "app1", "AGORA_WEBHOOK_SECRETS": "s", "PCU_CAP": "10"})
    assert settings.pcu_limits("app1") == pcu.Limits(cap=10, warn_fraction=0.8)
    assert settings.pcu_limits("elsewhere").cap == 20


def test_the_pcu_warning_fraction_is_configurable() -> None:
    assert config.load({"PCU_WARN_FRACTION": "0.5"}).pcu_warn_fraction == 0.5
    assert config.load({"PCU_WARN_FRACTION": "1"}).pcu_warn_fraction == 1.0


@pytest.mark.parametrize("raw", ["0", "-0.1", "1.5", "most", "nan"])
def test_a_bad_pcu_warning_fraction_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="PCU_WARN_FRACTION"):
        config.load({"PCU_WARN_FRACTION": raw})


def test_the_console_and_the_stream_have_working_defaults() -> None:
    settings = config.load({})
    assert settings.console_session_key is None  # the console is off until a key is set
    assert (settings.stream_max_subscribers, settings.stream_heartbeat_s) == (100, 10.0)
    assert settings.webhook_counts_flush_s == 10.0


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"CONSOLE_SESSION_KEY": "too-short"}, "CONSOLE_SESSION_KEY"),
        ({"STREAM_HEARTBEAT_S": "16"}, "STREAM_HEARTBEAT_S"),
        ({"STREAM_HEARTBEAT_S": "0"}, "STREAM_HEARTBEAT_S"),
        ({"STREAM_MAX_SUBSCRIBERS": "0"}, "STREAM_MAX_SUBSCRIBERS"),
        ({"WEBHOOK_COUNTS_FLUSH_S": "0"}, "WEBHOOK_COUNTS_FLUSH_S"),
    ],
)
def test_console_and_stream_settings_are_checked(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named) as raised:
        config.load(environ)
    assert "too-short" not in str(raised.value)  # a key is never echoed


def test_operations_settings_default_to_keep_everything_and_one_port() -> None:
    settings = config.load({})
    assert settings.admin_api_tokens == ()
    assert settings.history_retention_days == 0
    assert settings.metrics_port is None


def test_operations_settings_are_read_from_the_environment(tmp_path: Path) -> None:
    apps_file = tmp_path / "apps.toml"
    apps_file.write_text(
        "[[apps]]\napp_id = 'a1'\nwebhook_secrets = ['s']\nread_tokens = ['r1', 'r2']\n"
        "[[apps]]\napp_id = 'a2'\nwebhook_secrets = ['s']\nread_tokens = 'r3, r4'\n"
    )
    settings = config.load(
        {
            "LEDGER_APPS_FILE": str(apps_file),
            "ADMIN_API_TOKENS": "adm1, adm2",
            "HISTORY_RETENTION_DAYS": "90",
            "METRICS_PORT": "9100",
        }
    )
    assert [str(t) for t in settings.apps["a1"].read_tokens] == ["r1", "r2"]
    assert [str(t) for t in settings.apps["a2"].read_tokens] == ["r3", "r4"]
    assert [str(t) for t in settings.admin_api_tokens] == ["adm1", "adm2"]
    assert (settings.history_retention_days, settings.metrics_port) == (90, 9100)
    for hidden in ("r1", "r3", "adm1"):
        assert f"'{hidden}'" not in repr(settings)
