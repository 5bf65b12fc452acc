"""Settings: every environment variable the service reads, read once, in `cli.py`.

`load(environ)` returns a frozen `Settings` or raises `ConfigError` naming the variable at fault.
Nothing else reads `os.environ`. Secrets are `starlette.datastructures.Secret`s so they never show
in a `repr`, a log line or an error message; `str(secret)` gives the value where it is needed.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, Literal
from urllib.parse import urlsplit, urlunsplit

from starlette.datastructures import Secret

from service import pcu
from service.errors import ConfigError

DEFAULT_API_BASE_URL: Final = "https://api.agora.io/api/conversational-ai-agent"
DEFAULT_PCU_CAP: Final = 20
DEFAULT_RETENTION_DAYS: Final = 30
# SIGTERM handling of `serve` (service/shutdown.py): both together stay well inside the pod's
# terminationGracePeriodSeconds (45 in deploy/kubernetes).
DEFAULT_SHUTDOWN_DRAIN_S: Final = 5.0
DEFAULT_SHUTDOWN_TIMEOUT_S: Final = 20
DEFAULT_PCU_WARN_FRACTION: Final = 0.8
# A webhook waits at most this on PostgreSQL, then is answered 503: NCS gives up on an answer
# after 10 seconds, and a 503 in time makes it retry.
DEFAULT_DATABASE_TIMEOUT_S: Final = 5.0
DEFAULT_STREAM_SUBSCRIBERS: Final = 100
DEFAULT_STREAM_HEARTBEAT_S: Final = 10.0
DEFAULT_WEBHOOK_COUNTS_FLUSH_S: Final = 10.0
MAX_STREAM_HEARTBEAT_S: Final = 15.0
MIN_SESSION_KEY_CHARS: Final = 32
LOG_LEVELS: Final = ("debug", "info", "warning", "error", "critical")
_APP_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_APP_FILE_KEYS: Final = frozenset(
    {
        "app_id",
        "webhook_secrets",
        "customer_id",
        "customer_secret",
        "app_certificate",
        "pcu_cap",
        "read_tokens",
    }
)

LogFormat = Literal["json", "console"]


@dataclass(frozen=True, slots=True, kw_only=True)
class AppSettings:
    """One Agora project (App ID) served by this deployment."""

    app_id: str
    webhook_secrets: tuple[Secret, ...] = ()
    customer_id: str | None = None
    customer_secret: Secret | None = None
    app_certificate: Secret | None = None
    pcu_cap: int = DEFAULT_PCU_CAP
    # Bearer tokens that read this app only (`service.access`); from the apps file.
    read_tokens: tuple[Secret, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    database_url: Secret | None = None
    apps: Mapping[str, AppSettings] = field(default_factory=lambda: MappingProxyType({}))
    read_api_tokens: tuple[Secret, ...] = ()
    # The longest a request waits on PostgreSQL (a connection or a statement) before a 503.
    database_timeout_s: float = DEFAULT_DATABASE_TIMEOUT_S
    agora_api_base_url: str = DEFAULT_API_BASE_URL
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    log_format: LogFormat = "json"
    reconcile_interval_s: float = 60.0
    # Reconciliation leaves an Agora start or stop younger than this to its webhook, which may
    # still be on its way; past it, a missing webhook is repaired (and counted as lost).
    reconcile_grace_s: float = 60.0
    # Agents active longer than Agora's 72-hour session limit plus this are queried every pass.
    reconcile_watchdog_margin_s: float = 3600.0
    history_grace_s: float = 600.0
    # Stored raw notifications older than this are pruned by the worker; 0 keeps them forever.
    notification_retention_days: int = DEFAULT_RETENTION_DAYS
    shutdown_drain_s: float = DEFAULT_SHUTDOWN_DRAIN_S
    shutdown_timeout_s: int = DEFAULT_SHUTDOWN_TIMEOUT_S
    # Agora REST calls: per-attempt timeout, then retries of 429/5xx/transport errors with
    # exponential backoff and full jitter, bounded by attempts and by total time.
    agora_timeout_s: float = 10.0
    agora_retry_attempts: int = 6
    agora_retry_timeout_s: float = 60.0
    agora_retry_wait_initial_s: float = 0.5
    agora_retry_wait_max_s: float = 10.0
    # The history worker: jobs in flight per process, claim lease, idle poll period.
    history_concurrency: int = 8
    history_lease_s: float = 60.0
    history_poll_s: float = 2.0
    pcu_warn_fraction: float = DEFAULT_PCU_WARN_FRACTION
    # prometheus-client's multiprocess directory; `serve --workers N` sets it for its workers.
    metrics_multiprocess_dir: str | None = None
    # Signs the console's session cookies; without it the console is off (service/console/).
    console_session_key: Secret | None = None
    # GET /v1/stream and the console's live parts (service/stream.py): streams per process, and
    # the longest quiet time before a comment line (the contract promises one at least every 15 s).
    stream_max_subscribers: int = DEFAULT_STREAM_SUBSCRIBERS
    stream_heartbeat_s: float = DEFAULT_STREAM_HEARTBEAT_S
    # Operations (CONTRACT §8): admin tokens, transcript retention, the metrics port.
    admin_api_tokens: tuple[Secret, ...] = ()
    history_retention_days: int = 0
    metrics_port: int | None = None
    # How often a serving process adds its webhook counts to the database (service/webhook_counts).
    webhook_counts_flush_s: float = DEFAULT_WEBHOOK_COUNTS_FLUSH_S

    def app(self, app_id: str) -> AppSettings | None:
        return self.apps.get(app_id)

    def pcu_limits(self, app_id: str) -> pcu.Limits:
        """The app's cap (the default for an app not configured) and the warning fraction."""
        app = self.apps.get(app_id)
        cap = app.pcu_cap if app is not None else DEFAULT_PCU_CAP
        return pcu.Limits(cap=cap, warn_fraction=self.pcu_warn_fraction)

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url is None:
            raise ConfigError("DATABASE_URL is not set")
        return str(self.database_url)


def load(environ: Mapping[str, str]) -> Settings:
    """Read and validate every setting; raise `ConfigError` naming the first bad variable."""
    env = {key: value for key, value in environ.items() if value.strip() != ""}
    apps: dict[str, AppSettings] = {}
    if "LEDGER_APPS_FILE" in env:
        for app in _apps_from_file(Path(env["LEDGER_APPS_FILE"])):
            _add_app(apps, app, source="LEDGER_APPS_FILE")
    env_app = _app_from_env(env)
    if env_app is not None:
        _add_app(apps, env_app, source="AGORA_APP_ID")
    database_url = env.get("DATABASE_URL")
    return Settings(
        database_url=Secret(_database_url(database_url)) if database_url else None,
        apps=MappingProxyType(apps),
        read_api_tokens=tuple(Secret(t) for t in _csv(env.get("READ_API_TOKENS", ""))),
        database_timeout_s=_float(
            env, "DATABASE_TIMEOUT_S", DEFAULT_DATABASE_TIMEOUT_S, positive=True
        ),
        agora_api_base_url=_http_url(env, "AGORA_API_BASE_URL", DEFAULT_API_BASE_URL),
        host=env.get("HOST", "127.0.0.1"),
        port=_int(env, "PORT", 8000, minimum=1, maximum=65535),
        log_level=_choice(env, "LOG_LEVEL", "info", LOG_LEVELS),
        log_format="console"
        if _choice(env, "LOG_FORMAT", "json", ("json", "console")) == "console"
        else "json",
        reconcile_interval_s=_float(env, "RECONCILE_INTERVAL_S", 60.0),
        reconcile_grace_s=_float(env, "RECONCILE_GRACE_S", 60.0),
        reconcile_watchdog_margin_s=_float(env, "RECONCILE_WATCHDOG_MARGIN_S", 3600.0),
        history_grace_s=_float(env, "HISTORY_GRACE_S", 600.0),
        notification_retention_days=_int(
            env, "NOTIFICATION_RETENTION_DAYS", DEFAULT_RETENTION_DAYS, minimum=0
        ),
        shutdown_drain_s=_float(env, "SHUTDOWN_DRAIN_S", DEFAULT_SHUTDOWN_DRAIN_S),
        shutdown_timeout_s=_int(env, "SHUTDOWN_TIMEOUT_S", DEFAULT_SHUTDOWN_TIMEOUT_S, minimum=1),
        agora_timeout_s=_float(env, "AGORA_TIMEOUT_S", 10.0, positive=True),
        agora_retry_attempts=_int(env, "AGORA_RETRY_ATTEMPTS", 6, minimum=1, maximum=100),
        agora_retry_timeout_s=_float(env, "AGORA_RETRY_TIMEOUT_S", 60.0, positive=True),
        agora_retry_wait_initial_s=_float(env, "AGORA_RETRY_WAIT_INITIAL_S", 0.5),
        agora_retry_wait_max_s=_float(env, "AGORA_RETRY_WAIT_MAX_S", 10.0),
        history_concurrency=_int(env, "HISTORY_CONCURRENCY", 8, minimum=1, maximum=256),
        history_lease_s=_float(env, "HISTORY_LEASE_S", 60.0, positive=True),
        history_poll_s=_float(env, "HISTORY_POLL_S", 2.0, positive=True),
        pcu_warn_fraction=_fraction(env, "PCU_WARN_FRACTION", DEFAULT_PCU_WARN_FRACTION),
        metrics_multiprocess_dir=env.get("PROMETHEUS_MULTIPROC_DIR"),
        console_session_key=_session_key(env),
        stream_max_subscribers=_int(
            env, "STREAM_MAX_SUBSCRIBERS", DEFAULT_STREAM_SUBSCRIBERS, minimum=1, maximum=100_000
        ),
        stream_heartbeat_s=_heartbeat(env),
        # Operations (CONTRACT §8)
        admin_api_tokens=tuple(Secret(t) for t in _csv(env.get("ADMIN_API_TOKENS", ""))),
        history_retention_days=_int(env, "HISTORY_RETENTION_DAYS", 0, minimum=0),
        metrics_port=_metrics_port(env),
        webhook_counts_flush_s=_float(
            env, "WEBHOOK_COUNTS_FLUSH_S", DEFAULT_WEBHOOK_COUNTS_FLUSH_S, positive=True
        ),
    )


def _session_key(env: Mapping[str, str]) -> Secret | None:
    key = env.get("CONSOLE_SESSION_KEY")
    if key is None:
        return None
    if len(key.strip()) < MIN_SESSION_KEY_CHARS:
        # Never echo the key.
        raise ConfigError(
            f"CONSOLE_SESSION_KEY must be at least {MIN_SESSION_KEY_CHARS} characters"
        )
    return Secret(key.strip())


def _heartbeat(env: Mapping[str, str]) -> float:
    value = _float(env, "STREAM_HEARTBEAT_S", DEFAULT_STREAM_HEARTBEAT_S, positive=True)
    if value > MAX_STREAM_HEARTBEAT_S:
        raise ConfigError(f"STREAM_HEARTBEAT_S must be at most {MAX_STREAM_HEARTBEAT_S:g} seconds")
    return value


def _metrics_port(env: Mapping[str, str]) -> int | None:
    if "METRICS_PORT" not in env:
        return None
    port = _int(env, "METRICS_PORT", 0, minimum=1, maximum=65535)
    if port == _int(env, "PORT", 8000, minimum=1, maximum=65535):
        raise ConfigError(f"METRICS_PORT must differ from PORT, both are {port}")
    return port


def _app_from_env(env: Mapping[str, str]) -> AppSettings | None:
    app_id = env.get("AGORA_APP_ID")
    if app_id is None:
        for dependent in (
            "AGORA_WEBHOOK_SECRETS",
            "AGORA_CUSTOMER_ID",
            "AGORA_CUSTOMER_SECRET",
            "AGORA_APP_CERTIFICATE",
        ):
            if dependent in env:
                raise ConfigError(f"{dependent} is set but AGORA_APP_ID is not")
        return None
    if not _APP_ID.match(app_id):
        raise ConfigError("AGORA_APP_ID must be 1-64 letters, digits, '-' or '_'")
    customer_id, customer_secret = env.get("AGORA_CUSTOMER_ID"), env.get("AGORA_CUSTOMER_SECRET")
    if (customer_id is None) != (customer_secret is None):
        missing = "AGORA_CUSTOMER_SECRET" if customer_secret is None else "AGORA_CUSTOMER_ID"
        raise ConfigError(f"{missing} is required when the other REST credential is set")
    secrets = _csv(env.get("AGORA_WEBHOOK_SECRETS", ""))
    if not secrets:
        # Without one every webhook is refused (401): say so at start, not in Agora's Console.
        raise ConfigError("AGORA_WEBHOOK_SECRETS is required when AGORA_APP_ID is set")
    certificate = env.get("AGORA_APP_CERTIFICATE")
    return AppSettings(
        app_id=app_id,
        webhook_secrets=tuple(Secret(s) for s in secrets),
        customer_id=customer_id,
        customer_secret=Secret(customer_secret) if customer_secret is not None else None,
        app_certificate=Secret(certificate) if certificate is not None else None,
        pcu_cap=_int(env, "PCU_CAP", DEFAULT_PCU_CAP, minimum=1),
    )


def _apps_from_file(path: Path) -> list[AppSettings]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"LEDGER_APPS_FILE cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"LEDGER_APPS_FILE is not valid TOML: {exc}") from None
    entries = document.get("apps", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("LEDGER_APPS_FILE must contain [[apps]] tables")
    return [
        _app_from_table(entry, where=f"LEDGER_APPS_FILE [[apps]] #{i + 1}")
        for i, entry in enumerate(entries)
    ]


def _app_from_table(entry: dict[str, object], *, where: str) -> AppSettings:
    unknown = sorted(set(entry) - _APP_FILE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    app_id = entry.get("app_id")
    if not isinstance(app_id, str) or not _APP_ID.match(app_id):
        raise ConfigError(f"{where}: app_id must be 1-64 letters, digits, '-' or '_'")
    secrets = entry.get("webhook_secrets", [])
    if isinstance(secrets, str):
        secrets = _csv(secrets)
    if not isinstance(secrets, list) or not all(isinstance(s, str) and s for s in secrets):
        raise ConfigError(f"{where}: webhook_secrets must be a list of non-empty strings")
    if not secrets:
        raise ConfigError(f"{where} (app_id {app_id!r}): webhook_secrets is required")
    cap = entry.get("pcu_cap", DEFAULT_PCU_CAP)
    if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
        raise ConfigError(f"{where}: pcu_cap must be a positive integer")
    strings: dict[str, str | None] = {}
    for key in ("customer_id", "customer_secret", "app_certificate"):
        value = entry.get(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise ConfigError(f"{where}: {key} must be a non-empty string")
        strings[key] = value
    if (strings["customer_id"] is None) != (strings["customer_secret"] is None):
        raise ConfigError(f"{where}: customer_id and customer_secret go together")
    tokens = entry.get("read_tokens", [])
    if isinstance(tokens, str):
        tokens = _csv(tokens)
    if not isinstance(tokens, list) or not all(isinstance(t, str) and t.strip() for t in tokens):
        raise ConfigError(f"{where}: read_tokens must be a list of non-empty strings")
    return AppSettings(
        app_id=app_id,
        webhook_secrets=tuple(Secret(s) for s in secrets),
        customer_id=strings["customer_id"],
        customer_secret=_secret(strings["customer_secret"]),
        app_certificate=_secret(strings["app_certificate"]),
        pcu_cap=cap,
        read_tokens=tuple(Secret(t.strip()) for t in tokens),
    )


def _add_app(apps: dict[str, AppSettings], app: AppSettings, *, source: str) -> None:
    if app.app_id in apps:
        raise ConfigError(f"{source}: app {app.app_id!r} is configured twice")
    apps[app.app_id] = app


def _secret(value: str | None) -> Secret | None:
    return Secret(value) if value is not None else None


def _csv(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _int(
    env: Mapping[str, str], key: str, default: int, *, minimum: int, maximum: int | None = None
) -> int:
    raw = env.get(key)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{key} must be an integer, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ConfigError(f"{key} must be {bound}, got {value}")
    return value


def _float(env: Mapping[str, str], key: str, default: float, *, positive: bool = False) -> float:
    raw = env.get(key)
    if raw is None:
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{key} must be a number of seconds, got {raw!r}") from None
    if not 0 <= value < float("inf"):
        raise ConfigError(f"{key} must be zero or more seconds, got {raw!r}")
    if positive and value == 0:
        raise ConfigError(f"{key} must be more than zero seconds, got {raw!r}")
    return value


def _fraction(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key)
    if raw is None:
        return default
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{key} must be a number, got {raw!r}") from None
    if not 0 < value <= 1:
        raise ConfigError(f"{key} must be more than 0 and at most 1, got {raw!r}")
    return value


def _choice(env: Mapping[str, str], key: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(key, default).strip().lower()
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _http_url(env: Mapping[str, str], key: str, default: str) -> str:
    value = env.get(key, default).strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{key} must be an http(s) URL")
    return value


def _database_url(raw: str) -> str:
    """Accept postgres://, postgresql:// and postgresql+psycopg://; answer the psycopg form."""
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("postgres", "postgresql", "postgresql+psycopg"):
        # Never echo the URL: it may carry a password.
        raise ConfigError("DATABASE_URL must be a postgresql:// URL")
    return urlunsplit(parts._replace(scheme="postgresql+psycopg"))
