"""A server that cannot load its checkpoint or settings refuses to start, with one line."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("case", ["missing", "corrupt", "settings"])
def test_refuses_to_start_with_one_line(failed_starts, case):
    code, log, out, message = failed_starts[case]
    assert code != 0, log
    assert f"cannot start: {message}" in log, log
    assert "Traceback" not in log + out, log
    assert "Application startup failed" in log
