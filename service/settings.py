"""Relay's settings: one frozen Struct, built from the environment (and ./relay.toml under serve) once."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import SplitResult, urlsplit

import msgspec
from msgspec import Meta

from delivery.address_guard import parse_callback_url
from delivery.destinations import (
    DEFAULT_BREAKER_THRESHOLD,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_PROBE_S,
    MAX_PROBE_S,
    FlowSettings,
)
from delivery.errors import ConfigError, InvalidCallbackUrl
from delivery.keys import CLUSTER_PARTITIONS, MAX_PARTITIONS
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
# A kind's result, progress message or error larger than this (as JSON) fails its attempt: ResultTooLarge.
DEFAULT_MAX_RESULT_BYTES = 1024 * 1024
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_MAX_INPUT_DEPTH = 64
DEFAULT_TENANT_MAX_OPEN_TASKS = 100_000
DEFAULT_DEAD_LETTER_RETENTION_S = 30 * 86400
DEFAULT_REQUEST_TIMEOUT_S = 10.0
DEFAULT_WS_MAX_PER_CLIENT = 100
DEFAULT_WS_IDLE_TIMEOUT_S = 30.0
DEFAULT_TENANT_MAX_STREAMS = 1000
# More proxies than this in front of Relay is a typo, not a deployment.
MAX_TRUSTED_PROXIES = 32
# A webhook attempt's lease: twice its timeout and this much more (a worker that dies gives its slot back then).
LEASE_MARGIN_S = 5.0

# Deeper JSON cannot be read back safely inside the records that hold it (Python's recursion limit).
MAX_INPUT_DEPTH = 200

# Upper bounds that only keep out nonsense (and infinity): ten years of seconds, a billion of anything.
MAX_SECONDS = 10 * 365 * 86400.0
MAX_COUNT = 1_000_000_000

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

Seconds = Annotated[float, Meta(gt=0, le=MAX_SECONDS)]
WholeSeconds = Annotated[int, Meta(ge=1, le=int(MAX_SECONDS))]
Count = Annotated[int, Meta(ge=1, le=MAX_COUNT)]
RedisMode = Literal["standalone", "cluster"]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every setting, validated by its type's constraints when built from the environment (see :data:`ENV`)."""

    redis_url: str | None = None
    broker_url: str | None = None
    data_dir: str = DEFAULT_DATA_DIR
    api_keys: dict[str, str] = msgspec.field(default_factory=dict)  # key -> tenant
    admin_token: str | None = None
    retry_schedule_s: tuple[Annotated[float, Meta(ge=0, le=MAX_SECONDS)], ...] = DEFAULT_RETRY_SCHEDULE_S
    webhook_timeout_s: Seconds = DEFAULT_WEBHOOK_TIMEOUT_S
    ws_ack_timeout_s: Seconds = DEFAULT_WS_ACK_TIMEOUT_S
    ws_ping_interval_s: Seconds = DEFAULT_WS_PING_INTERVAL_S
    ws_ping_timeout_s: Seconds = DEFAULT_WS_PING_TIMEOUT_S
    event_retention_s: WholeSeconds = DEFAULT_EVENT_RETENTION_S
    allow_private_callbacks: bool = False
    max_body_bytes: Count = DEFAULT_MAX_BODY_BYTES
    max_result_bytes: Count = DEFAULT_MAX_RESULT_BYTES
    task_modules: tuple[str, ...] = ()
    submit_rate: Annotated[float, Meta(ge=0, le=MAX_COUNT)] = 0.0  # 0: no limit
    max_input_depth: Annotated[int, Meta(ge=1, le=MAX_INPUT_DEPTH)] = DEFAULT_MAX_INPUT_DEPTH
    tenant_max_open_tasks: Count = DEFAULT_TENANT_MAX_OPEN_TASKS
    dead_letter_retention_s: WholeSeconds = DEFAULT_DEAD_LETTER_RETENTION_S
    request_timeout_s: Seconds = DEFAULT_REQUEST_TIMEOUT_S
    ws_max_per_client: Count = DEFAULT_WS_MAX_PER_CLIENT
    # Proxies in front of Relay whose X-Forwarded-For entries are trusted (0: none, the peer is the client).
    trust_forwarded: Annotated[int, Meta(ge=0, le=MAX_TRUSTED_PROXIES)] = 0
    tenant_max_streams: Count = DEFAULT_TENANT_MAX_STREAMS
    ws_idle_timeout_s: Seconds = DEFAULT_WS_IDLE_TIMEOUT_S
    destination_max_in_flight: Annotated[int, Meta(ge=1, le=MAX_IN_FLIGHT)] = DEFAULT_MAX_IN_FLIGHT
    breaker_threshold: Count = DEFAULT_BREAKER_THRESHOLD
    breaker_probe_s: Annotated[float, Meta(gt=0, le=MAX_PROBE_S)] = DEFAULT_PROBE_S
    ops_webhook_url: str | None = None
    redis_mode: RedisMode = "standalone"
    # Partitions of the keyspace, fixed when the store is new (None: one on a standalone Redis, more on a cluster).
    partitions: Annotated[int, Meta(ge=1, le=MAX_PARTITIONS)] | None = None

    def __post_init__(self) -> None:
        # Every URL is checked here, at start, so that a bad one ends a command with one line naming its variable
        # rather than with a traceback from the client library that first connects.
        if self.redis_url is not None:
            if self.redis_mode == "cluster":
                for seed in self.redis_url.split(","):
                    _check_redis_url("RELAY_REDIS_URL", seed.strip(), cluster=True)
            else:
                _check_redis_url("RELAY_REDIS_URL", self.redis_url)
        seeds = [seed.strip() for seed in (self.redis_url or "").split(",")]
        if self.redis_mode == "cluster" and (self.broker_url is None or self.broker_url.strip() in seeds):
            raise ValueError(
                "RELAY_BROKER_URL: a Redis Cluster cannot hold Dramatiq's queue; set RELAY_BROKER_URL to RabbitMQ "
                "(amqp://…) or to a standalone Redis (redis://…) beside the cluster"
            )
        if self.broker_url is not None:
            if self.broker_url.startswith(("amqp://", "amqps://")):
                _check_amqp_url("RELAY_BROKER_URL", self.broker_url)
            else:
                _check_redis_url("RELAY_BROKER_URL", self.broker_url, other="amqp:// or amqps:// (RabbitMQ)")
        if self.ops_webhook_url is not None:
            try:
                parse_callback_url(self.ops_webhook_url)
            except InvalidCallbackUrl as exc:
                raise ValueError(f"RELAY_OPS_WEBHOOK_URL: {exc}") from None

    @property
    def cluster(self) -> bool:
        return self.redis_mode == "cluster"

    @property
    def partition_count(self) -> int:
        """The partitions of the keyspace (see delivery.keys): as set, else one standalone and more on a cluster."""
        if self.partitions is not None:
            return self.partitions
        return CLUSTER_PARTITIONS if self.cluster else 1

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
        """Build settings from ``env`` (default ``os.environ``), with ``toml_path`` values under them.

        An empty variable means its default. Raises :class:`ConfigError` naming the variable that is wrong.
        """
        values: dict[str, str] = {}
        if toml_path is not None and toml_path.is_file():
            values.update(_read_toml(toml_path))
        values.update({k: v for k, v in (os.environ if env is None else env).items() if k.startswith("RELAY_")})
        fields: dict[str, object] = {}
        for name, field_name in ENV.items():
            raw = values.get(name, "").strip()
            if not raw and field_name not in _BOOLEANS:
                continue
            try:
                fields[field_name] = _parse(field_name, raw)
            except ValueError as exc:
                raise ConfigError(f"{name}: {exc}") from None
        try:
            return msgspec.convert(fields, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(_name_the_variable(str(exc), fields)) from None

    def to_env(self) -> dict[str, str]:
        """The environment that rebuilds these settings in a child process."""
        env = {}
        for name, field_name in ENV.items():
            value = getattr(self, field_name)
            if value is None:
                continue
            if isinstance(value, bool):
                env[name] = "true" if value else "false"
            elif isinstance(value, dict):
                env[name] = ",".join(f"{tenant}={key}" for key, tenant in value.items())
            elif isinstance(value, tuple):
                env[name] = ",".join(repr(v) if isinstance(v, float) else str(v) for v in value)
            elif isinstance(value, float):
                env[name] = repr(value)
            else:
                env[name] = str(value)
        return env


def parse_api_keys(text: str) -> dict[str, str]:
    """``tenant=key,tenant=key`` -> {key: tenant}. Errors say which entry, never what it holds."""
    keys: dict[str, str] = {}
    for n, item in enumerate(filter(None, (part.strip() for part in text.split(","))), start=1):
        tenant, sep, key = (part.strip() for part in item.partition("="))
        if not sep or not tenant or not key:
            raise ValueError(f"entry {n} is not tenant=key")
        if keys.get(key, tenant) != tenant:
            raise ValueError(f"entry {n} gives a key that another tenant has")
        keys[key] = tenant
    return keys


# Each variable and the field it sets.
ENV = {
    "RELAY_REDIS_URL": "redis_url",
    "RELAY_BROKER_URL": "broker_url",
    "RELAY_DATA_DIR": "data_dir",
    "RELAY_API_KEYS": "api_keys",
    "RELAY_ADMIN_TOKEN": "admin_token",
    "RELAY_RETRY_SCHEDULE": "retry_schedule_s",
    "RELAY_WEBHOOK_TIMEOUT": "webhook_timeout_s",
    "RELAY_WS_ACK_TIMEOUT": "ws_ack_timeout_s",
    "RELAY_WS_PING_INTERVAL": "ws_ping_interval_s",
    "RELAY_WS_PING_TIMEOUT": "ws_ping_timeout_s",
    "RELAY_EVENT_RETENTION": "event_retention_s",
    "RELAY_ALLOW_PRIVATE_CALLBACKS": "allow_private_callbacks",
    "RELAY_MAX_BODY_BYTES": "max_body_bytes",
    "RELAY_MAX_RESULT_BYTES": "max_result_bytes",
    "RELAY_TASK_MODULES": "task_modules",
    "RELAY_SUBMIT_RATE": "submit_rate",
    "RELAY_MAX_INPUT_DEPTH": "max_input_depth",
    "RELAY_TENANT_MAX_OPEN_TASKS": "tenant_max_open_tasks",
    "RELAY_DEAD_LETTER_RETENTION": "dead_letter_retention_s",
    "RELAY_REQUEST_TIMEOUT": "request_timeout_s",
    "RELAY_WS_MAX_PER_CLIENT": "ws_max_per_client",
    "RELAY_TRUST_FORWARDED": "trust_forwarded",
    "RELAY_WS_IDLE_TIMEOUT": "ws_idle_timeout_s",
    "RELAY_DESTINATION_MAX_IN_FLIGHT": "destination_max_in_flight",
    "RELAY_BREAKER_THRESHOLD": "breaker_threshold",
    "RELAY_BREAKER_PROBE_S": "breaker_probe_s",
    "RELAY_OPS_WEBHOOK_URL": "ops_webhook_url",
    "RELAY_TENANT_MAX_STREAMS": "tenant_max_streams",
    "RELAY_REDIS_MODE": "redis_mode",
    "RELAY_PARTITIONS": "partitions",
}
_FIELD_ENV = {field_name: name for name, field_name in ENV.items()}
_BOOLEANS = {"allow_private_callbacks"}
# Values never repeated in an error message.
_SECRET = {"redis_url", "broker_url", "api_keys", "admin_token", "ops_webhook_url"}
_AT_FIELD = re.compile(r" - at `\$\.(\w+)(\[\d+\])?`$")


def _parse(field_name: str, raw: str) -> object:
    """What msgspec converts: a list for the comma-separated values, a bool for the spellings of one."""
    if field_name == "api_keys":
        return parse_api_keys(raw)
    if field_name == "retry_schedule_s":
        parts = [part.strip() for part in raw.split(",")]
        if not all(parts):
            raise ValueError(f"{raw!r} is not comma-separated seconds")
        return parts
    if field_name == "task_modules":
        return [module.strip() for module in raw.split(",") if module.strip()]
    if field_name in _BOOLEANS:
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise ValueError(f"{raw!r} is not true or false")
    if field_name == "trust_forwarded":
        # true/1 trusts one proxy, N trusts N; false/0 (or unset) none.
        if raw.lower() in _TRUE:
            return 1
        if raw.lower() in _FALSE:
            return 0
        if raw.isdigit():
            return int(raw)
        raise ValueError(f"{raw!r} is not false, true or a number of proxies")
    if field_name == "redis_mode":
        return raw.lower()
    return raw


_REDIS_SCHEMES = ("redis", "rediss", "unix")


def _check_redis_url(name: str, url: str, *, other: str = "", cluster: bool = False) -> None:
    """A Redis URL that redis-py can connect with; the errors say what is wrong and never repeat the URL (it may
    hold a password)."""
    # Checked as given, as the clients that connect with it read it (they neither trim it nor take REDIS://).
    text = url
    if text != text.strip():
        raise ValueError(f"{name}: spaces around the URL")
    if "," in text:
        why = f"{name}: one URL expected, got several separated by commas"
        if name == "RELAY_REDIS_URL":
            why += " (seed nodes are for RELAY_REDIS_MODE=cluster)"
        raise ValueError(why)
    parts = _split(name, text)
    scheme = text.split("://", 1)[0] if "://" in text else ""
    if scheme not in _REDIS_SCHEMES:
        wanted = "redis://, rediss:// or unix://" + (f", or {other}" if other else "")
        raise ValueError(f"{name}: expected {wanted}, not {scheme + '://' if scheme else 'no scheme'}")
    if scheme == "unix":
        if cluster:
            raise ValueError(f"{name}: a cluster's seed nodes are redis:// or rediss:// addresses")
        if not parts.path:
            raise ValueError(f"{name}: a unix:// URL needs the socket's path")
        return
    if not parts.hostname:
        raise ValueError(f"{name}: no host")
    _port(name, parts)
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"{name}: the path must be a database number (/0), not /{db[:20]}")


def _check_amqp_url(name: str, url: str) -> None:
    text = url.strip()
    if "," in text:
        raise ValueError(f"{name}: one URL expected, got several separated by commas")
    parts = _split(name, text)
    if not parts.hostname:
        raise ValueError(f"{name}: no host")
    _port(name, parts)


def _split(name: str, url: str) -> SplitResult:
    if any(c.isspace() for c in url):
        raise ValueError(f"{name}: a URL holds no spaces")
    try:
        return urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"{name}: not a URL ({exc})") from None


def _port(name: str, parts: SplitResult) -> None:
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{name}: the port must be a number from 1 to 65535") from None
    if port is not None and port == 0:
        raise ValueError(f"{name}: the port must be a number from 1 to 65535")


def _name_the_variable(message: str, fields: Mapping[str, object]) -> str:
    """msgspec's ``Expected `float` > 0.0 - at `$.webhook_timeout_s``` as ``RELAY_WEBHOOK_TIMEOUT: ...``."""
    match = _AT_FIELD.search(message)
    if match is None or match.group(1) not in _FIELD_ENV:
        return message
    field_name = match.group(1)
    reason = message[: match.start()]
    if field_name not in _SECRET:
        reason += f" (got {fields.get(field_name)!r})"
    return f"{_FIELD_ENV[field_name]}: {reason}"


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
