"""Child-process targets for tests/test_overlap_stages.py (spawned: importable, light)."""

from __future__ import annotations

import time
from typing import Any


def sleep_then_report(seconds: float, conn: Any) -> None:
    """Sleep (the test kills it meanwhile), then report a result that never comes."""
    time.sleep(seconds)
    conn.send({"summary": {}})
