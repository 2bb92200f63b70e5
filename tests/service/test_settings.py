"""Settings from the environment (and relay.toml under serve): the contract's defaults, clear errors, round trips."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from delivery.errors import ConfigError
from service.settings import Settings, parse_api_keys


def test_defaults_match_the_contract() -> None:
    settings = Settings.from_env({})
    assert settings.redis_url is None
    assert settings.broker_url is None
    assert settings.data_dir == "./.relay"
    assert settings.api_keys == {}
    assert settings.admin_token is None
    assert settings.retry_schedule_s == (5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 50400.0, 72000.0, 86400.0)
    assert settings.webhook_timeout_s == 15.0
    assert settings.ws_ack_timeout_s == 10.0
    assert settings.ws_ping_interval_s == 20.0
    assert settings.ws_ping_timeout_s == 20.0
    assert settings.event_retention_s == 86400
    assert settings.allow_private_callbacks is False
    assert settings.max_body_bytes == 262144
    assert settings.max_result_bytes == 1_048_576
    assert settings.task_modules == ()
    assert settings.submit_rate == 0.0
    assert settings.max_input_depth == 64
    assert settings.tenant_max_open_tasks == 100_000
    assert settings.dead_letter_retention_s == 2_592_000
    assert settings.request_timeout_s == 10.0
    assert settings.ws_max_per_client == 100
    assert settings.trust_forwarded == 0
    assert settings.tenant_max_streams == 1000
    assert settings.redis_mode == "standalone"
    assert settings.ws_idle_timeout_s == 30.0


def test_only_relay_variables_are_read() -> None:
    settings = Settings.from_env({"REDIS_URL": "redis://elsewhere:1/0", "MAX_BODY_BYTES": "5"})
    assert settings.redis_url is None
    assert settings.max_body_bytes == 262144


def test_every_variable_is_read() -> None:
    settings = Settings.from_env(
        {
            "RELAY_REDIS_URL": "redis://127.0.0.1:7000/1",
            "RELAY_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672/",
            "RELAY_DATA_DIR": "/tmp/relay-data",
            "RELAY_API_KEYS": "acme=key-acme",
            "RELAY_ADMIN_TOKEN": "adm",
            "RELAY_RETRY_SCHEDULE": "0.5, 2,10",
            "RELAY_WEBHOOK_TIMEOUT": "2.5",
            "RELAY_WS_ACK_TIMEOUT": "3",
            "RELAY_WS_PING_INTERVAL": "4",
            "RELAY_WS_PING_TIMEOUT": "6",
            "RELAY_EVENT_RETENTION": "60",
            "RELAY_ALLOW_PRIVATE_CALLBACKS": "yes",
            "RELAY_MAX_BODY_BYTES": "1024",
            "RELAY_MAX_RESULT_BYTES": "2048",
            "RELAY_TASK_MODULES": " mod.a , mod.b ,",
            "RELAY_SUBMIT_RATE": "2.5",
            "RELAY_MAX_INPUT_DEPTH": "10",
            "RELAY_TENANT_MAX_OPEN_TASKS": "7",
            "RELAY_DEAD_LETTER_RETENTION": "3600",
            "RELAY_REQUEST_TIMEOUT": "2.5",
            "RELAY_WS_MAX_PER_CLIENT": "4",
            "RELAY_TRUST_FORWARDED": "true",
            "RELAY_WS_IDLE_TIMEOUT": "9",
            "RELAY_TENANT_MAX_STREAMS": "11",
            "RELAY_REDIS_MODE": "Standalone",
        }
    )
    assert settings.redis_url == "redis://127.0.0.1:7000/1"
    assert settings.effective_broker_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.data_dir == "/tmp/relay-data"
    assert settings.api_keys == {"key-acme": "acme"}
    assert settings.admin_token == "adm"
    assert settings.retry_schedule_s == (0.5, 2.0, 10.0)
    assert settings.webhook_timeout_s == 2.5
    assert settings.ws_ack_timeout_s == 3.0
    assert settings.ws_ping_interval_s == 4.0
    assert settings.ws_ping_timeout_s == 6.0
    assert settings.event_retention_s == 60
    assert settings.allow_private_callbacks is True
    assert settings.max_body_bytes == 1024
    assert settings.max_result_bytes == 2048
    assert settings.task_modules == ("mod.a", "mod.b")
    assert settings.submit_rate == 2.5
    assert settings.max_input_depth == 10
    assert settings.tenant_max_open_tasks == 7
    assert settings.dead_letter_retention_s == 3600
    assert settings.request_timeout_s == 2.5
    assert settings.ws_max_per_client == 4
    assert settings.trust_forwarded == 1
    assert settings.ws_idle_timeout_s == 9.0
    assert settings.tenant_max_streams == 11
    assert settings.redis_mode == "standalone"


@pytest.mark.parametrize(
    "name",
    [
        "RELAY_MAX_INPUT_DEPTH",
        "RELAY_TENANT_MAX_OPEN_TASKS",
        "RELAY_DEAD_LETTER_RETENTION",
        "RELAY_WS_MAX_PER_CLIENT",
        "RELAY_TENANT_MAX_STREAMS",
    ],
)
@pytest.mark.parametrize("value", ["abc", "0", "-1", "1.5", "nan"])
def test_a_bad_whole_number_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_an_input_depth_beyond_what_can_be_read_back_is_refused() -> None:
    with pytest.raises(ConfigError, match="RELAY_MAX_INPUT_DEPTH"):
        Settings.from_env({"RELAY_MAX_INPUT_DEPTH": "5000"})


def test_broker_defaults_to_the_redis_url() -> None:
    assert Settings.from_env({"RELAY_REDIS_URL": "redis://127.0.0.1:7000/0"}).effective_broker_url == (
        "redis://127.0.0.1:7000/0"
    )


def test_no_redis_url_is_a_config_error_when_storage_is_needed() -> None:
    settings = Settings.from_env({})
    with pytest.raises(ConfigError, match="RELAY_REDIS_URL"):
        _ = settings.storage_url
    with pytest.raises(ConfigError, match="RELAY_REDIS_URL"):
        _ = settings.effective_broker_url


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "on", " True "])
def test_true_spellings(value: str) -> None:
    assert Settings.from_env({"RELAY_ALLOW_PRIVATE_CALLBACKS": value}).allow_private_callbacks is True


@pytest.mark.parametrize("value", ["0", "false", "False", "no", "off", ""])
def test_false_spellings(value: str) -> None:
    assert Settings.from_env({"RELAY_ALLOW_PRIVATE_CALLBACKS": value}).allow_private_callbacks is False


@pytest.mark.parametrize("value", ["maybe", "2", "y", "enabled"])
def test_a_bad_boolean_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="RELAY_ALLOW_PRIVATE_CALLBACKS"):
        Settings.from_env({"RELAY_ALLOW_PRIVATE_CALLBACKS": value})


@pytest.mark.parametrize(
    "name",
    [
        "RELAY_WEBHOOK_TIMEOUT",
        "RELAY_WS_ACK_TIMEOUT",
        "RELAY_WS_PING_INTERVAL",
        "RELAY_WS_PING_TIMEOUT",
        "RELAY_EVENT_RETENTION",
        "RELAY_MAX_BODY_BYTES",
        "RELAY_SUBMIT_RATE",
        "RELAY_REQUEST_TIMEOUT",
        "RELAY_WS_IDLE_TIMEOUT",
    ],
)
@pytest.mark.parametrize("value", ["abc", "-1", "1O", "nan", "inf"])
def test_a_bad_number_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize("name", ["RELAY_WEBHOOK_TIMEOUT", "RELAY_MAX_BODY_BYTES", "RELAY_EVENT_RETENTION"])
def test_zero_is_refused_where_it_cannot_work(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: "0"})


def test_a_submit_rate_of_zero_means_no_limit() -> None:
    assert Settings.from_env({"RELAY_SUBMIT_RATE": "0"}).submit_rate == 0.0


@pytest.mark.parametrize("value", ["5,x", "5,,10", "-1,5", "nan", "5,inf"])
def test_a_bad_retry_schedule_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="RELAY_RETRY_SCHEDULE"):
        Settings.from_env({"RELAY_RETRY_SCHEDULE": value})


def test_api_keys_map_each_key_to_its_tenant() -> None:
    assert parse_api_keys(" acme = key-a , globex=key-g,acme=key-a2,") == {
        "key-a": "acme",
        "key-g": "globex",
        "key-a2": "acme",
    }
    assert parse_api_keys("") == {}


def test_an_api_key_may_contain_equals_signs() -> None:
    assert parse_api_keys("acme=abc==") == {"abc==": "acme"}


@pytest.mark.parametrize("value", ["acme", "=key", "acme=", "acme= ", "acme=k,globex"])
def test_a_malformed_api_key_entry_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="RELAY_API_KEYS"):
        Settings.from_env({"RELAY_API_KEYS": value})


def test_one_key_for_two_tenants_is_refused() -> None:
    with pytest.raises(ConfigError, match="RELAY_API_KEYS"):
        Settings.from_env({"RELAY_API_KEYS": "acme=shared,globex=shared"})


def test_relay_toml_values_sit_under_the_environment(tmp_path: Path) -> None:
    toml = tmp_path / "relay.toml"
    toml.write_text(
        "max_body_bytes = 2048\n"
        "RELAY_WEBHOOK_TIMEOUT = 3.5\n"
        "allow_private_callbacks = true\n"
        "retry_schedule = [1, 2.5, 10]\n"
        'api_keys = "acme=from-toml"\n'
        "submit_rate = 4\n"
    )
    settings = Settings.from_env({"RELAY_MAX_BODY_BYTES": "4096", "RELAY_SUBMIT_RATE": "1"}, toml_path=toml)
    assert settings.max_body_bytes == 4096  # the environment wins
    assert settings.submit_rate == 1.0
    assert settings.webhook_timeout_s == 3.5  # the file fills in the rest
    assert settings.allow_private_callbacks is True
    assert settings.retry_schedule_s == (1.0, 2.5, 10.0)
    assert settings.api_keys == {"from-toml": "acme"}


def test_a_missing_relay_toml_is_ignored(tmp_path: Path) -> None:
    assert Settings.from_env({}, toml_path=tmp_path / "relay.toml") == Settings.from_env({})


def test_a_bad_value_in_relay_toml_names_the_variable(tmp_path: Path) -> None:
    toml = tmp_path / "relay.toml"
    toml.write_text('max_body_bytes = "lots"\n')
    with pytest.raises(ConfigError, match="RELAY_MAX_BODY_BYTES"):
        Settings.from_env({}, toml_path=toml)


@pytest.mark.parametrize(
    "env",
    [
        {},
        {
            "RELAY_REDIS_URL": "redis://127.0.0.1:7000/0",
            "RELAY_BROKER_URL": "amqp://127.0.0.1:5672/",
            "RELAY_DATA_DIR": "/var/lib/relay",
            "RELAY_API_KEYS": "acme=key-a,globex=key-g,acme=key-a2",
            "RELAY_ADMIN_TOKEN": "adm",
            "RELAY_RETRY_SCHEDULE": "0.1,0.2,1.5,3600",
            "RELAY_WEBHOOK_TIMEOUT": "0.75",
            "RELAY_WS_ACK_TIMEOUT": "1.25",
            "RELAY_WS_PING_INTERVAL": "5",
            "RELAY_WS_PING_TIMEOUT": "7",
            "RELAY_EVENT_RETENTION": "120",
            "RELAY_ALLOW_PRIVATE_CALLBACKS": "true",
            "RELAY_MAX_BODY_BYTES": "999",
            "RELAY_TASK_MODULES": "a.b,c",
            "RELAY_SUBMIT_RATE": "0.3",
            "RELAY_MAX_INPUT_DEPTH": "20",
            "RELAY_TENANT_MAX_OPEN_TASKS": "50",
            "RELAY_DEAD_LETTER_RETENTION": "600",
            "RELAY_REQUEST_TIMEOUT": "3.5",
            "RELAY_WS_MAX_PER_CLIENT": "9",
            "RELAY_TRUST_FORWARDED": "3",
            "RELAY_WS_IDLE_TIMEOUT": "12.5",
            "RELAY_TENANT_MAX_STREAMS": "40",
            "RELAY_OPS_WEBHOOK_URL": "https://ops.example/hooks",
        },
    ],
    ids=["defaults", "everything-set"],
)
def test_to_env_rebuilds_the_same_settings(env: dict[str, str]) -> None:
    settings = Settings.from_env(env)
    child_env = settings.to_env()
    assert all(name.startswith("RELAY_") for name in child_env)
    assert Settings.from_env(child_env) == settings


@pytest.mark.parametrize(
    ("value", "proxies"),
    [("", 0), ("false", 0), ("0", 0), ("no", 0), ("true", 1), ("1", 1), ("yes", 1), ("2", 2), (" 5 ", 5)],
)
def test_trust_forwarded_counts_the_trusted_proxies(value: str, proxies: int) -> None:
    assert Settings.from_env({"RELAY_TRUST_FORWARDED": value}).trust_forwarded == proxies


@pytest.mark.parametrize("value", ["maybe", "-1", "1.5", "100"])
def test_a_bad_trust_forwarded_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="RELAY_TRUST_FORWARDED"):
        Settings.from_env({"RELAY_TRUST_FORWARDED": value})


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://127.0.0.1/0",
        "redis://:secret@redis.internal:6380",
        "rediss://user:secret@redis.internal:6380/2",
        "unix:///run/redis.sock?db=1",
    ],
)
def test_a_good_redis_url_is_taken(url: str) -> None:
    settings = Settings.from_env({"RELAY_REDIS_URL": url, "RELAY_BROKER_URL": url})
    assert settings.storage_url == url
    assert settings.effective_broker_url == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis://127.0.0.1:6379/0,redis://127.0.0.1:6380/0", "several separated by commas"),
        ("redis://127.0.0.1:99999/0", "port"),
        ("redis://127.0.0.1:63x9/0", "port"),
        ("redis://127.0.0.1:0/0", "port"),
        ("redis://127.0.0.1:6379/zero", "database number"),
        ("http://127.0.0.1:6379/0", "expected redis://"),
        ("127.0.0.1:6379", "expected redis://"),
        ("redis:///0", "no host"),
        ("redis://127.0.0.1:6379/0 redis://127.0.0.1:6380/0", "spaces"),
        ("unix://", "path"),
        ("REDIS://127.0.0.1:6379/0", "expected redis://"),  # redis-py and the broker take the scheme as written
    ],
)
def test_a_malformed_redis_url_names_the_variable_and_never_repeats_it(url: str, why: str) -> None:
    secret_url = url.replace("127.0.0.1", "user:hunter2@127.0.0.1", 1)
    with pytest.raises(ConfigError, match=f"^RELAY_REDIS_URL: .*{why}") as raised:
        Settings.from_env({"RELAY_REDIS_URL": secret_url})
    assert "hunter2" not in str(raised.value)


def test_a_comma_in_a_standalone_redis_url_says_that_seed_nodes_are_for_cluster_mode() -> None:
    with pytest.raises(ConfigError, match="RELAY_REDIS_MODE=cluster"):
        Settings.from_env({"RELAY_REDIS_URL": "redis://a:1,redis://b:2"})


def test_cluster_mode_without_a_broker_of_its_own_is_refused_naming_relay_broker_url() -> None:
    seeds = "redis://a:1,redis://b:2"
    with pytest.raises(ConfigError, match=r"^RELAY_BROKER_URL: a Redis Cluster cannot hold"):
        Settings.from_env({"RELAY_REDIS_MODE": "cluster", "RELAY_REDIS_URL": seeds})
    with pytest.raises(ConfigError, match=r"^RELAY_BROKER_URL: a Redis Cluster cannot hold"):
        Settings.from_env({"RELAY_REDIS_MODE": "cluster", "RELAY_REDIS_URL": seeds, "RELAY_BROKER_URL": "redis://b:2"})


def test_cluster_mode_takes_seed_nodes_and_a_broker_and_cuts_the_store_into_partitions() -> None:
    settings = Settings.from_env(
        {"RELAY_REDIS_MODE": "cluster", "RELAY_REDIS_URL": "redis://a:1, redis://b:2", "RELAY_BROKER_URL": "amqp://q/"}
    )
    assert settings.cluster
    assert settings.partition_count == 64
    assert Settings.from_env({"RELAY_REDIS_URL": "redis://a:1"}).partition_count == 1
    assert Settings.from_env({"RELAY_REDIS_URL": "redis://a:1", "RELAY_PARTITIONS": "8"}).partition_count == 8
    with pytest.raises(ConfigError, match="RELAY_PARTITIONS"):
        Settings.from_env({"RELAY_PARTITIONS": "0"})
    with pytest.raises(ConfigError, match="seed nodes are redis://"):
        Settings.from_env(
            {"RELAY_REDIS_MODE": "cluster", "RELAY_REDIS_URL": "unix:///tmp/r.sock", "RELAY_BROKER_URL": "amqp://q/"}
        )


def test_an_unknown_redis_mode_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="RELAY_REDIS_MODE"):
        Settings.from_env({"RELAY_REDIS_MODE": "sentinel"})


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("amqp://guest:hunter2@127.0.0.1:99999/", "port"),
        ("amqp://guest:hunter2@127.0.0.1:5672/,amqp://guest:hunter2@127.0.0.1:5673/", "commas"),
        ("amqp:///vhost", "no host"),
        ("kafka://guest:hunter2@127.0.0.1:9092", "expected redis://.*or amqp://"),
        ("redis://guest:hunter2@127.0.0.1:6379/0,redis://127.0.0.1:6380/0", "commas"),
    ],
)
def test_a_malformed_broker_url_names_the_variable(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=f"^RELAY_BROKER_URL: .*{why}") as raised:
        Settings.from_env({"RELAY_REDIS_URL": "redis://127.0.0.1:6379/0", "RELAY_BROKER_URL": url})
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize("url", ["https://ops.example:99999/hook", "ftp://ops.example/hook", "ops.example/hook"])
def test_a_malformed_ops_webhook_url_names_the_variable(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^RELAY_OPS_WEBHOOK_URL: "):
        Settings.from_env({"RELAY_OPS_WEBHOOK_URL": url})


@pytest.mark.parametrize("command", ["api", "worker"])
def test_relay_exits_with_one_line_naming_a_malformed_redis_url(command: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["RELAY_REDIS_URL"] = "redis://:hunter2@127.0.0.1:6379/0,redis://127.0.0.1:6380/0"
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("Error: RELAY_REDIS_URL: one URL expected, got several separated by commas")
    assert "hunter2" not in done.stderr
