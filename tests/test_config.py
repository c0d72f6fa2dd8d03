"""Settings from a mapping: defaults, overrides, every problem at once, no token in repr."""

from __future__ import annotations

import pytest

from csvgen.config import Settings, is_loopback_url, redact_url
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
