"""Wiring: the routes csvgen serves and the clients they share."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from .config import Settings
from .routes import Router


@contextlib.asynccontextmanager
async def build_router(settings: Settings) -> AsyncIterator[Router]:
    router = Router()
    yield router
