"""Settings from a mapping: defaults, overrides, every problem at once, no token in repr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from csvgen.cli import JEMALLOC, POLARS_JEMALLOC, allocator_settings
from csvgen.config import Settings, is_loopback_url, redact_url, unknown_variables
from csvgen.errors import ConfigError


def test_defaults_follow_the_spec() -> None:
    """Only the bus URL is required; the metrics link defaults to the bus's."""
    s = Settings.from_env({"CSVGEN_BUS_URL": "wss://bus.example", "CSVGEN_BUS_TOKEN": "t"})
    assert (s.metrics_url, s.metrics_token) == ("wss://bus.example", "t")
    assert (s.bucket, s.key_prefix, s.url_expires_s) == ("aura-exports", "exports", 900)
    assert (s.max_concurrent_exports, s.max_queued_exports) == (4, 100)
    assert (s.dedupe_ttl_s, s.metric_timeout_s, s.shutdown_grace_s) == (600, 300, 60)
    assert s.max_rows == 10_000_000


def test_overrides_win_over_the_environment() -> None:
    """Flags (passed as overrides) beat variables."""
    env = {"CSVGEN_BUS_URL": "ws://a", "CSVGEN_BUCKET": "from-env"}
    s = Settings.from_env(env, {"CSVGEN_BUCKET": "from-flag", "CSVGEN_METRICS_URL": "ws://m"})
    assert (s.bucket, s.metrics_url) == ("from-flag", "ws://m")


def test_every_problem_is_reported_at_once() -> None:
    """A bad configuration names every bad variable in one error."""
    env = {
        "CSVGEN_URL_EXPIRES_S": "604801",
        "CSVGEN_MAX_CONCURRENT_EXPORTS": "zero",
        "CSVGEN_METRIC_TIMEOUT_S": "-1",
        "CSVGEN_METRICS_URL": "http://x?token=secret",
        "CSVGEN_LOG_LEVEL": "loud",
    }
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.problems == [
        "CSVGEN_METRICS_URL: must be a ws:// or wss:// URL, got 'http://x'",
        "CSVGEN_URL_EXPIRES_S: must be between 1 and 604800, got 604801",
        "CSVGEN_MAX_CONCURRENT_EXPORTS: must be an integer, got 'zero'",
        "CSVGEN_METRIC_TIMEOUT_S: must be a positive number of seconds, got '-1'",
        "CSVGEN_LOG_LEVEL: must be DEBUG, INFO, WARNING or ERROR, got 'loud'",
        "CSVGEN_BUS_URL: required (the bus WebSocket URL, ws:// or wss://)",
    ]
    assert "secret" not in str(info.value)


def test_tokens_never_show_in_repr() -> None:
    """repr(settings) is safe to log."""
    s = Settings.from_env(
        {"CSVGEN_BUS_URL": "ws://a", "CSVGEN_BUS_TOKEN": "tok-1", "CSVGEN_METRICS_TOKEN": "tok-2"}
    )
    assert "tok-1" not in repr(s) and "tok-2" not in repr(s)


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("ws://127.0.0.1:9", True),
        ("ws://localhost/x", True),
        ("ws://[::1]:1", True),
        ("wss://ws.auravision.ai", False),
    ],
)
def test_loopback_urls(url: str, loopback: bool) -> None:
    assert is_loopback_url(url) is loopback


def test_redact_url_drops_query_and_user() -> None:
    assert redact_url("wss://u:p@h:99/p?token=x") == "wss://h:99/p"


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        (
            "CSVGEN_BUS_URL",
            "ws://127.0.0.1:99999/bus",
            "must be a ws:// or wss:// URL with a port in 1-65535",
        ),
        ("CSVGEN_METRICS_URL", "ws://127.0.0.1:0/m", "the port must be in 1-65535, got 0"),
        ("CSVGEN_METRICS_URL", "ws://h/a b", "must not contain spaces or control characters"),
        (
            "CSVGEN_BUCKET",
            "bad/bucket name",
            "must be 3-63 characters of lowercase letters, digits, dots and hyphens, starting and ending with a letter or digit, got 'bad/bucket name'",
        ),
        ("CSVGEN_BUCKET", "a..b", "must not hold '..', '.-' or '-.', got 'a..b'"),
        (
            "CSVGEN_BUCKET",
            "192.168.1.1",
            "must not be formatted as an IP address, got '192.168.1.1'",
        ),
        ("CSVGEN_KEY_PREFIX", "../..", "must not hold empty, '.' or '..' segments, got '../..'"),
        ("CSVGEN_KEY_PREFIX", "/exports", "must not start with '/', got '/exports'"),
        ("CSVGEN_KEY_PREFIX", "a//b", "must not hold empty, '.' or '..' segments, got 'a//b'"),
        (
            "AWS_ENDPOINT_URL_S3",
            "ftp://s3.local",
            "must be a http:// or https:// URL, got 'ftp://s3.local'",
        ),
        (
            "AWS_ENDPOINT_URL_S3",
            "http://s3.local:70000",
            "must be a http:// or https:// URL with a port in 1-65535",
        ),
    ],
)
def test_every_value_is_checked_before_connecting(name: str, value: str, problem: str) -> None:
    """Issue 8 #12: bad ports, bucket names, key prefixes and S3 endpoints exit at startup."""
    env = {"CSVGEN_BUS_URL": "ws://127.0.0.1:9/bus", name: value}
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.problems == [f"{name}: {problem}"]


@pytest.mark.parametrize("prefix", ["exports", "a/b-c/d_e", "exports/"])
def test_good_key_prefixes(prefix: str) -> None:
    s = Settings.from_env({"CSVGEN_BUS_URL": "ws://h/bus", "CSVGEN_KEY_PREFIX": prefix})
    assert s.key_prefix == prefix.rstrip("/")


def test_repr_hides_user_info_and_queries() -> None:
    """Issue 8 #12: the settings line at start shows no credentials of any URL."""
    s = Settings.from_env(
        {
            "CSVGEN_BUS_URL": "wss://user:pa55@bus.example:8443/ws?token=abc",
            "CSVGEN_METRICS_URL": "wss://m.example/x?key=k3y",
        }
    )
    shown = repr(s)
    assert "bus_url='wss://bus.example:8443/ws'" in shown
    assert "metrics_url='wss://m.example/x'" in shown
    assert not any(secret in shown for secret in ("pa55", "user", "abc", "k3y"))


def test_unknown_variables_are_named_with_the_closest_known_one() -> None:
    env = {"CSVGEN_MAX_ROW": "5", "CSVGEN_BUCKET": "b", "CSVGEN_ZZZ": "1", "HOME": "/root"}
    assert unknown_variables(env) == [
        "unknown variable CSVGEN_MAX_ROW is ignored; did you mean CSVGEN_MAX_ROWS?",
        "unknown variable CSVGEN_ZZZ is ignored",
    ]


def test_new_limits_have_the_spec_defaults() -> None:
    s = Settings.from_env({"CSVGEN_BUS_URL": "ws://h/bus"})
    assert (s.max_body_bytes, s.max_body_depth) == (1024 * 1024, 32)
    assert (s.max_metric_requests, s.max_columns) == (50, 500)
    assert (s.max_answer_bytes, s.export_timeout_s) == (4 * 1024**3, 1800)


def test_the_spill_directory_must_exist_and_be_writable(tmp_path: Path) -> None:
    env = {"CSVGEN_BUS_URL": "ws://a", "CSVGEN_SPILL_DIR": str(tmp_path)}
    assert Settings.from_env(env).spill_dir == str(tmp_path)
    assert Settings.from_env({"CSVGEN_BUS_URL": "ws://a"}).spill_dir is None  # system temp
    missing = str(tmp_path / "missing")
    with pytest.raises(ConfigError) as info:
        Settings.from_env({**env, "CSVGEN_SPILL_DIR": missing})
    assert info.value.problems == [
        f"CSVGEN_SPILL_DIR: must be an existing directory, got {missing!r}"
    ]
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError):
        Settings.from_env({**env, "CSVGEN_SPILL_DIR": str(tmp_path / "file")})


@pytest.mark.parametrize(
    ("inherited", "expected"),
    [
        ("", JEMALLOC),
        # passed down by a parent that imported polars: not the operator's choice
        (POLARS_JEMALLOC, JEMALLOC),
        (POLARS_JEMALLOC + ",narenas:2", JEMALLOC + ",narenas:2"),
        # the operator's own comes last, so jemalloc takes it over csvgen's
        ("dirty_decay_ms:5000", JEMALLOC + ",dirty_decay_ms:5000"),
    ],
)
def test_polars_allocator_settings(inherited: str, expected: str) -> None:
    assert allocator_settings(inherited) == expected


def test_polars_writes_the_allocator_settings_csvgen_drops() -> None:
    """What a polars-importing parent passes down is what ``allocator_settings`` drops: if
    polars changes its string, this fails rather than the worker silently running on it."""
    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    script = "import os, polars; print(os.environ['_RJEM_MALLOC_CONF'])"
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, check=True)
    assert out.stdout.decode().strip() == POLARS_JEMALLOC
