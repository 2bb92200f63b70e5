"""Relay's settings: one frozen Struct, built from the environment (and ./relay.toml under serve) once."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

import msgspec

from delivery.address_guard import parse_callback_url
from delivery.destinations import (
    DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_PROBE_S,
    MAX_PROBE_S,
    FlowSettings,
)
from delivery.errors import ConfigError, InvalidCallbackUrl
from schemas.destinations import MAX_IN_FLIGHT

# The Standard Webhooks example schedule: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
DEFAULT_RETRY_SCHEDULE_S = (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)
DEFAULT_DATA_DIR = "./.relay"
DEFAULT_WEBHOOK_TIMEOUT_S = 15.0
DEFAULT_WS_ACK_TIMEOUT_S = 10.0
DEFAULT_WS_PING_INTERVAL_S = 20.0
DEFAULT_WS_PING_TIMEOUT_S = 20.0
DEFAULT_EVENT_RETENTION_S = 86400
DEFAULT_MAX_BODY_BYTES = 262144
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_MAX_INPUT_DEPTH = 64
DEFAULT_TENANT_MAX_OPEN_TASKS = 100_000
DEFAULT_DEAD_LETTER_RETENTION_S = 30 * 86400
DEFAULT_REQUEST_TIMEOUT_S = 10.0
DEFAULT_WS_MAX_PER_CLIENT = 100
DEFAULT_WS_IDLE_TIMEOUT_S = 30.0
# A webhook attempt's lease: twice its timeout and this much more (a worker that dies gives its slot back then).
LEASE_MARGIN_S = 5.0

# Deeper JSON cannot be read back safely inside the records that hold it (Python's recursion limit).
MAX_INPUT_DEPTH = 200

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    redis_url: str | None = None
    broker_url: str | None = None
    data_dir: str = DEFAULT_DATA_DIR
    api_keys: dict[str, str] = msgspec.field(default_factory=dict)  # key -> tenant
    admin_token: str | None = None
    retry_schedule_s: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE_S
    webhook_timeout_s: float = DEFAULT_WEBHOOK_TIMEOUT_S
    ws_ack_timeout_s: float = DEFAULT_WS_ACK_TIMEOUT_S
    ws_ping_interval_s: float = DEFAULT_WS_PING_INTERVAL_S
    ws_ping_timeout_s: float = DEFAULT_WS_PING_TIMEOUT_S
    event_retention_s: int = DEFAULT_EVENT_RETENTION_S
    allow_private_callbacks: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    task_modules: tuple[str, ...] = ()
    submit_rate: float = 0.0
    max_input_depth: int = DEFAULT_MAX_INPUT_DEPTH
    tenant_max_open_tasks: int = DEFAULT_TENANT_MAX_OPEN_TASKS
    dead_letter_retention_s: int = DEFAULT_DEAD_LETTER_RETENTION_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    ws_max_per_client: int = DEFAULT_WS_MAX_PER_CLIENT
    trust_forwarded: bool = False
    ws_idle_timeout_s: float = DEFAULT_WS_IDLE_TIMEOUT_S
    destination_max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD
    breaker_probe_s: float = DEFAULT_PROBE_S
    ops_webhook_url: str | None = None

    @property
    def flow(self) -> FlowSettings:
        """The destinations' defaults, as every script that changes a destination takes them."""
        return FlowSettings(
            max_in_flight=self.destination_max_in_flight,
            breaker_threshold=self.breaker_threshold,
            probe_s=self.breaker_probe_s,
            lease_s=2 * self.webhook_timeout_s + LEASE_MARGIN_S,
            retry_span_s=sum(self.retry_schedule_s),
        )

    @property
    def effective_broker_url(self) -> str:
        url = self.broker_url or self.redis_url
        if not url:
            raise ConfigError("RELAY_REDIS_URL is not set (relay serve starts an embedded Redis and sets it)")
        return url

    @property
    def broker_in_storage(self) -> bool:
        """The Dramatiq broker is a Redis broker in the storage Redis (its keys are written with the storage client)."""
        return self.effective_broker_url == self.storage_url

    @property
    def record_ttl_s(self) -> int:
        """Task records and attempt logs outlive the event log while webhooks may still be retrying."""
        return int(self.event_retention_s + sum(self.retry_schedule_s) + 3600)

    @property
    def storage_url(self) -> str:
        if not self.redis_url:
            raise ConfigError("RELAY_REDIS_URL is not set (relay serve starts an embedded Redis and sets it)")
        return self.redis_url

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, toml_path: Path | None = None) -> Settings:
        """Build settings from ``env`` (default ``os.environ``), with ``toml_path`` values under them."""
        values: dict[str, str] = {}
        if toml_path is not None and toml_path.is_file():
            values.update(_read_toml(toml_path))
        values.update({k: v for k, v in (os.environ if env is None else env).items() if k.startswith("RELAY_")})
        try:
            return cls(
                redis_url=values.get("RELAY_REDIS_URL") or None,
                broker_url=values.get("RELAY_BROKER_URL") or None,
                data_dir=values.get("RELAY_DATA_DIR") or DEFAULT_DATA_DIR,
                api_keys=parse_api_keys(values.get("RELAY_API_KEYS", "")),
                admin_token=values.get("RELAY_ADMIN_TOKEN") or None,
                retry_schedule_s=parse_schedule(values.get("RELAY_RETRY_SCHEDULE")),
                webhook_timeout_s=_positive(values, "RELAY_WEBHOOK_TIMEOUT", DEFAULT_WEBHOOK_TIMEOUT_S),
                ws_ack_timeout_s=_positive(values, "RELAY_WS_ACK_TIMEOUT", DEFAULT_WS_ACK_TIMEOUT_S),
                ws_ping_interval_s=_positive(values, "RELAY_WS_PING_INTERVAL", DEFAULT_WS_PING_INTERVAL_S),
                ws_ping_timeout_s=_positive(values, "RELAY_WS_PING_TIMEOUT", DEFAULT_WS_PING_TIMEOUT_S),
                event_retention_s=int(_positive(values, "RELAY_EVENT_RETENTION", DEFAULT_EVENT_RETENTION_S)),
                allow_private_callbacks=_bool(values, "RELAY_ALLOW_PRIVATE_CALLBACKS"),
                max_body_bytes=int(_positive(values, "RELAY_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES)),
                task_modules=tuple(m.strip() for m in values.get("RELAY_TASK_MODULES", "").split(",") if m.strip()),
                submit_rate=_non_negative(values, "RELAY_SUBMIT_RATE", 0.0),
                max_input_depth=_whole(values, "RELAY_MAX_INPUT_DEPTH", DEFAULT_MAX_INPUT_DEPTH, most=MAX_INPUT_DEPTH),
                tenant_max_open_tasks=_whole(values, "RELAY_TENANT_MAX_OPEN_TASKS", DEFAULT_TENANT_MAX_OPEN_TASKS),
                dead_letter_retention_s=_whole(values, "RELAY_DEAD_LETTER_RETENTION", DEFAULT_DEAD_LETTER_RETENTION_S),
                request_timeout_s=_positive(values, "RELAY_REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT_S),
                ws_max_per_client=_whole(values, "RELAY_WS_MAX_PER_CLIENT", DEFAULT_WS_MAX_PER_CLIENT),
                trust_forwarded=_bool(values, "RELAY_TRUST_FORWARDED"),
                ws_idle_timeout_s=_positive(values, "RELAY_WS_IDLE_TIMEOUT", DEFAULT_WS_IDLE_TIMEOUT_S),
                destination_max_in_flight=_whole(
                    values,
                    "RELAY_DESTINATION_MAX_IN_FLIGHT",
                    DEFAULT_MAX_IN_FLIGHT,
                    most=MAX_IN_FLIGHT,
                ),
                breaker_threshold=_whole(values, "RELAY_BREAKER_THRESHOLD", DEFAULT_BREAKER_THRESHOLD),
                breaker_probe_s=_probe_wait(values),
                ops_webhook_url=_ops_url(values),
            )
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def to_env(self) -> dict[str, str]:
        """The environment that rebuilds these settings in a child process."""
        env = {
            "RELAY_DATA_DIR": self.data_dir,
            "RELAY_API_KEYS": ",".join(f"{tenant}={key}" for key, tenant in self.api_keys.items()),
            "RELAY_RETRY_SCHEDULE": ",".join(repr(s) for s in self.retry_schedule_s),
            "RELAY_WEBHOOK_TIMEOUT": repr(self.webhook_timeout_s),
            "RELAY_WS_ACK_TIMEOUT": repr(self.ws_ack_timeout_s),
            "RELAY_WS_PING_INTERVAL": repr(self.ws_ping_interval_s),
            "RELAY_WS_PING_TIMEOUT": repr(self.ws_ping_timeout_s),
            "RELAY_EVENT_RETENTION": str(self.event_retention_s),
            "RELAY_ALLOW_PRIVATE_CALLBACKS": "true" if self.allow_private_callbacks else "false",
            "RELAY_MAX_BODY_BYTES": str(self.max_body_bytes),
            "RELAY_TASK_MODULES": ",".join(self.task_modules),
            "RELAY_SUBMIT_RATE": repr(self.submit_rate),
            "RELAY_MAX_INPUT_DEPTH": str(self.max_input_depth),
            "RELAY_TENANT_MAX_OPEN_TASKS": str(self.tenant_max_open_tasks),
            "RELAY_DEAD_LETTER_RETENTION": str(self.dead_letter_retention_s),
            "RELAY_REQUEST_TIMEOUT": repr(self.request_timeout_s),
            "RELAY_WS_MAX_PER_CLIENT": str(self.ws_max_per_client),
            "RELAY_TRUST_FORWARDED": "true" if self.trust_forwarded else "false",
            "RELAY_WS_IDLE_TIMEOUT": repr(self.ws_idle_timeout_s),
            "RELAY_DESTINATION_MAX_IN_FLIGHT": str(self.destination_max_in_flight),
            "RELAY_BREAKER_THRESHOLD": str(self.breaker_threshold),
            "RELAY_BREAKER_PROBE_S": repr(self.breaker_probe_s),
        }
        for name, value in (
            ("RELAY_REDIS_URL", self.redis_url),
            ("RELAY_BROKER_URL", self.broker_url),
            ("RELAY_ADMIN_TOKEN", self.admin_token),
            ("RELAY_OPS_WEBHOOK_URL", self.ops_webhook_url),
        ):
            if value:
                env[name] = value
        return env


def parse_api_keys(text: str) -> dict[str, str]:
    """``tenant=key,tenant=key`` -> {key: tenant}."""
    keys: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        tenant, sep, key = item.partition("=")
        if not sep or not tenant.strip() or not key.strip():
            raise ValueError(f"RELAY_API_KEYS: {item!r} is not tenant=key")
        if keys.get(key.strip(), tenant.strip()) != tenant.strip():
            raise ValueError("RELAY_API_KEYS: the same key is given to two tenants")
        keys[key.strip()] = tenant.strip()
    return keys


def parse_schedule(text: str | None) -> tuple[float, ...]:
    if text is None or not text.strip():
        return DEFAULT_RETRY_SCHEDULE_S
    try:
        schedule = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"RELAY_RETRY_SCHEDULE: {text!r} is not comma-separated seconds") from None
    if any(s < 0 or not math.isfinite(s) for s in schedule):
        raise ValueError("RELAY_RETRY_SCHEDULE: delays must be finite and not negative")
    return schedule


def _probe_wait(values: Mapping[str, str]) -> float:
    wait = _positive(values, "RELAY_BREAKER_PROBE_S", DEFAULT_PROBE_S)
    if wait > MAX_PROBE_S:
        raise ValueError(f"RELAY_BREAKER_PROBE_S can be at most {MAX_PROBE_S}")
    return wait


def _ops_url(values: Mapping[str, str]) -> str | None:
    url = values.get("RELAY_OPS_WEBHOOK_URL", "").strip()
    if not url:
        return None
    try:
        parse_callback_url(url)
    except InvalidCallbackUrl as exc:
        raise ValueError(f"RELAY_OPS_WEBHOOK_URL: {exc}") from None
    return url


def _positive(values: Mapping[str, str], name: str, default: float) -> float:
    number = _non_negative(values, name, default)
    if number == 0:
        raise ValueError(f"{name} must be above 0")
    return number


def _whole(values: Mapping[str, str], name: str, default: int, *, most: int | None = None) -> int:
    """A whole number of at least 1 (and at most ``most``)."""
    raw = values.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        number = int(raw.strip())
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not a whole number") from None
    if number < 1:
        raise ValueError(f"{name} must be at least 1")
    if most is not None and number > most:
        raise ValueError(f"{name} can be at most {most}")
    return number


def _non_negative(values: Mapping[str, str], name: str, default: float) -> float:
    raw = values.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        number = float(raw)
    except ValueError:
        raise ValueError(f"{name}: {raw!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{name}: {raw!r} is not a finite number")
    if number < 0:
        raise ValueError(f"{name} cannot be negative")
    return number


def _bool(values: Mapping[str, str], name: str) -> bool:
    raw = values.get(name, "").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ValueError(f"{name}: {raw!r} is not true or false")


def _read_toml(path: Path) -> dict[str, str]:
    """``relay.toml`` keys are the variable names, with or without ``RELAY_``, any case."""
    with path.open("rb") as fh:
        data = tomllib.load(fh)
    out: dict[str, str] = {}
    for key, value in data.items():
        name = key.upper()
        if not name.startswith("RELAY_"):
            name = "RELAY_" + name
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif isinstance(value, list):
            out[name] = ",".join(str(v) for v in value)
        else:
            out[name] = str(value)
    return out
