"""Child processes for tests: csvgen's own Child, with an environment free of local settings."""

from __future__ import annotations

import os
from typing import Any

from csvgen.standin.child import Child
from tests.conftest import AWS_ENV

__all__ = ["Child", "child_env"]


def child_env(**extra: str) -> dict[str, Any]:
    """This environment without CSVGEN_* and AWS_* settings, plus dummy AWS keys and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CSVGEN_", "AWS_"))}
    return {**env, **AWS_ENV, **extra}
