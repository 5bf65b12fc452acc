"""The console's URLs. Pages are HTML for people, left out of `/openapi.json`."""

from __future__ import annotations

from typing import Final

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from service.console import auth, pages

routes: Final[list[BaseRoute]] = [
    Route("/console", pages.overview, methods=["GET"], include_in_schema=False),
    Route("/console/login", auth.login_form, methods=["GET"], include_in_schema=False),
    Route("/console/login", auth.login, methods=["POST"], include_in_schema=False),
    Route("/console/logout", auth.logout, methods=["POST"], include_in_schema=False),
    Route("/console/agents", pages.agents, methods=["GET"], include_in_schema=False),
    Route("/console/agents/{agent_id}", pages.agent, methods=["GET"], include_in_schema=False),
    Route("/console/errors", pages.errors, methods=["GET"], include_in_schema=False),
    Route("/console/stream", pages.live, methods=["GET"], include_in_schema=False),
    Route(
        "/console/fragments/agent-rows", pages.agent_rows, methods=["GET"], include_in_schema=False
    ),
    Mount(
        "/console/static",
        app=StaticFiles(packages=[("service.console", "static")]),
        name="console_static",
    ),
]
