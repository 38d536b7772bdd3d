"""``create_dashboard(get_ctx)``: the dashboards as their own sub-app, mounted by the server at ``/dashboard``.

A mounted Starlette app does not run the parent's lifespan and has its own
``app.state``, so it is handed a function that returns the parent's
``AppContext`` (built by the server's lifespan).  The sub-app has its own
error pages (HTML, not JSON) and security headers; pages live in ``routes``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response

from server import deps
from server.dashboard import routes
from server.dashboard.routes import LoginRequired, templates
from server.deps import AppContext
from server.errors import RegistryError

STATIC_DIR = Path(__file__).resolve().parent / "static"

# Scripts only from our own static files (no inline script, no CDN); inline style attributes draw the bars.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'")


def create_dashboard(get_ctx: Callable[[], AppContext]) -> FastAPI:
    """The dashboard sub-app; ``get_ctx`` returns the server's context once its lifespan has started."""
    app = FastAPI(title="OTA dashboards", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.get_ctx = get_ctx
    app.dependency_overrides[deps.get_ctx] = get_ctx  # its routes use the server's Ctx and ReadSession
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.include_router(routes.router)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if not request.url.path.startswith(f"{request.scope.get('root_path', '')}/static"):
            response.headers.setdefault("Cache-Control", "no-store")  # pages hold fleet data: do not cache
        return response

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        return routes.login_redirect(request, exc)

    @app.exception_handler(RegistryError)
    async def _error(request: Request, exc: RegistryError) -> Response:
        return templates.TemplateResponse(request, "error.html", {**routes.page_context(request, "error"),
                                                                  "status": exc.status_code, "message": exc.message},
                                          status_code=exc.status_code)

    return app
