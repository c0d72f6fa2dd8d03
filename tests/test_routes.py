"""The route table: registration rules and lookups."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from csvgen.errors import UnknownRoute
from csvgen.frames import Action
from csvgen.routes import Router


async def handle(action: Action) -> Any:
    return {"body": [action.body]}


async def test_a_handle_route_runs_its_handler_when_the_job_runs() -> None:
    router = Router()
    router.add("external-service/echo", handle)
    job = router.resolve("external-service/echo").prepare(
        Action("r", "external-service/echo", {"a": 1})
    )
    entered = []

    @contextlib.asynccontextmanager
    async def slot() -> AsyncIterator[None]:
        entered.append(True)
        yield

    assert await job(b"fingerprint", slot) == {"body": [{"a": 1}]}
    assert entered == [True]  # the handler ran in the dispatcher's slot


def test_unknown_routes_raise_unknown_route() -> None:
    with pytest.raises(UnknownRoute) as info:
        Router().resolve("external-service/nope")
    assert info.value.route == "external-service/nope"


def test_registration_rules() -> None:
    router = Router()
    router.add("external-service/a", handle)
    with pytest.raises(ValueError, match="already registered"):
        router.add("external-service/a", handle)
    with pytest.raises(ValueError, match="exactly one of handle and prepare"):
        router.add("external-service/b")
