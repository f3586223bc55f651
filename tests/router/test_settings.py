"""Settings that guard the server (the admin endpoints are opened only on a loopback bind) and those
resolved at start-up."""

import os

import pytest
from pydantic import ValidationError

from router.settings import Settings, is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_admin_open_is_allowed_on_loopback(host):
    assert is_loopback(host)
    assert Settings(admin_open=True, host=host).admin_open


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "192.168.1.2", "example.org", ""])
def test_admin_open_is_refused_elsewhere(host):
    assert not is_loopback(host)
    with pytest.raises(ValidationError, match="admin_open needs a loopback host"):
        Settings(admin_open=True, host=host or "x")
    assert Settings(host=host or "x").admin_open is False  # closed by default, anywhere


def test_the_admin_token_is_never_shown():
    settings = Settings(admin_token="s3cret")
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())


def test_encode_threads_auto_shares_the_cores_between_workers(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert Settings().resolved_encode_threads() == 4
    assert Settings(workers=2, redis_url="redis://127.0.0.1:6379/0").resolved_encode_threads() == 2
    assert Settings(workers=8, redis_url="redis://127.0.0.1:6379/0").resolved_encode_threads() == 1
    assert Settings(encode_threads=3).resolved_encode_threads() == 3
    with pytest.raises(ValidationError, match="auto or a whole number"):
        Settings(encode_threads=0)
