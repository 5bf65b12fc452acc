"""GET /openapi.json: the OpenAPI 3.1 description of the service (unauthenticated)."""

from __future__ import annotations

from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from service import openapi


async def openapi_json(request: Request) -> Response:
    return JSONResponse(openapi.DOCUMENT)


routes: Final = [Route("/openapi.json", openapi_json, methods=["GET"])]
