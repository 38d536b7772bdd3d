"""HTTP for the dashboards: login, the pages, and the live counts they poll.

Every page needs the session cookie from the login form (``session``); an
expired or missing one sends the browser to the login page and back.  The
pages are read-only: operator actions stay in the CLI and the admin API,
which keeps the dashboards free of CSRF-sensitive forms other than login.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from starlette.responses import Response

from server.audit import store as audit_store
from server.dashboard import format as fmt
from server.dashboard import service, session, session_store
from server.dashboard.fleetcache import FleetFiguresCache, Snapshot
from server.db import utcnow
from server.deps import AppContext, Ctx, ReadSession
from server.devices import service as devices_service
from server.devices import store as device_store
from server.devices.deps import Presence
from server.devices.schemas import DEVICE_ID
from server.rollouts.deps import Members
from server.security import tokens_equal

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
templates = Jinja2Templates(directory=TEMPLATES_DIR)
templates.env.filters.update(bytes=fmt.human_bytes, pct=fmt.percent, ago=fmt.ago, ts=fmt.timestamp,
                             epoch=fmt.epoch, duration=fmt.duration, contract=fmt.contract_summary)

router = APIRouter()


class LoginRequired(Exception):
    """No valid session cookie; ``api`` requests get 401 JSON instead of a redirect."""

    def __init__(self, api: bool) -> None:
        super().__init__("log in to the dashboard with the admin token")
        self.api = api


def base_path(request: Request) -> str:
    """Where the dashboard is mounted (``/dashboard``), for links that survive a different mount point."""
    return request.scope.get("root_path", "").rstrip("/")


def login_redirect(request: Request, exc: LoginRequired) -> Response:
    if exc.api:
        return JSONResponse({"error": "unauthorized", "detail": "dashboard session expired; log in again"},
                            status_code=401)
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{base_path(request)}/login?next={quote(here)}", status_code=303)


def _check(request: Request, ctx: AppContext, api: bool) -> None:
    cookie = request.cookies.get(session.COOKIE)
    if not cookie:
        raise LoginRequired(api)
    with ctx.db.read_scope() as db:
        ok = session_store.is_valid(db, cookie, admin_token=ctx.settings.admin_token, now=utcnow())
    if not ok:
        raise LoginRequired(api)


def require_login(request: Request, ctx: Ctx) -> None:
    _check(request, ctx, api=False)


def require_login_api(request: Request, ctx: Ctx) -> None:
    _check(request, ctx, api=True)


Login = Depends(require_login)


def page_context(request: Request, nav: str, **extra: Any) -> dict[str, Any]:
    refresh = 5.0
    ctx_fn = getattr(request.app.state, "get_ctx", None)
    if ctx_fn is not None:
        refresh = ctx_fn().settings.dashboard_refresh_s
    return {"base": base_path(request), "nav": nav, "refresh_ms": int(refresh * 1000), **extra}


def render(request: Request, name: str, nav: str, title: str, data: dict[str, Any]) -> Response:
    return templates.TemplateResponse(request, name, {**page_context(request, nav, title=title), **data})


def _safe_next(request: Request, target: str | None) -> str:
    """Only paths inside the dashboard: a login link must not redirect anywhere else."""
    base = base_path(request)
    if target and target.startswith(f"{base}/") and not target.startswith("//") and "\\" not in target:
        return target
    return f"{base}/rollouts"


@router.get("/login", name="login")
def login_form(request: Request, next: str | None = None) -> Response:  # noqa: A002 - the query parameter's name
    return templates.TemplateResponse(request, "login.html", {**page_context(request, "", title="Log in"),
                                                              "next": _safe_next(request, next), "error": None})


def client_address(request: Request) -> str:
    """The caller's address as uvicorn saw it (behind a proxy: ``--forwarded-allow-ips`` decides)."""
    return request.client.host if request.client else "unknown"


def _login_page(request: Request, target: str, error: str, status_code: int,
                headers: dict[str, str] | None = None) -> Response:
    return templates.TemplateResponse(request, "login.html", {**page_context(request, "", title="Log in"),
                                                              "next": target, "error": error},
                                      status_code=status_code, headers=headers)


@router.post("/login")
async def login(request: Request, ctx: Ctx, token: Annotated[str, Form()] = "",
                next: Annotated[str, Form()] = "") -> Response:  # noqa: A002
    target = _safe_next(request, next)
    settings = ctx.settings
    outcome = await ctx.db.run_write(
        session_store.attempt_login, client=client_address(request),
        token_ok=tokens_equal(token.strip(), settings.admin_token), admin_token=settings.admin_token or "",
        now=utcnow(), lifetime_s=settings.dashboard_session_s, limit=settings.dashboard_login_max_failures,
        window_s=settings.dashboard_login_window_s)
    if outcome.retry_after_s is not None:
        return _login_page(request, target, f"Too many refused logins from your address; try again in "
                           f"{outcome.retry_after_s} s.", 429, {"Retry-After": str(outcome.retry_after_s)})
    if outcome.session_id is None:
        error = ("That is not the admin token; check that you copied all of it (it is the server's current "
                 "one: rotating it logs every browser out).") if token.strip() else "Enter the admin token."
        return _login_page(request, target, error, 401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(session.COOKIE, outcome.session_id, max_age=settings.dashboard_session_s,
                        path=base_path(request) or "/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(request: Request, ctx: Ctx) -> Response:
    cookie = request.cookies.get(session.COOKIE)
    if cookie:  # revoked server-side: a copy of the cookie is refused too
        await ctx.db.run_write(session_store.revoke, cookie, now=utcnow(), client=client_address(request))
    response = RedirectResponse(f"{base_path(request)}/login", status_code=303)
    response.delete_cookie(session.COOKIE, path=base_path(request) or "/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response


@router.get("/", dependencies=[Login])
def home(request: Request) -> Response:
    return RedirectResponse(f"{base_path(request)}/rollouts", status_code=303)


@router.get("/rollouts", dependencies=[Login])
def rollouts_list(request: Request, db: ReadSession, members: Members) -> Response:
    return render(request, "rollouts.html", "rollouts", "Rollouts", service.rollouts_page(db, members))


@router.get("/rollouts/{rollout_id}", dependencies=[Login])
def rollout_detail(request: Request, rollout_id: int, db: ReadSession, members: Members) -> Response:
    return render(request, "rollout.html", "rollouts", f"Rollout {rollout_id}", service.rollout_page(db, members, rollout_id))


@router.get("/bandwidth", dependencies=[Login])
def bandwidth(request: Request, ctx: Ctx, db: ReadSession, members: Members) -> Response:
    return render(request, "bandwidth.html", "bandwidth", "Bandwidth", service.bandwidth_page(db, members, ctx.settings))


def _fleet_figures(request: Request, ctx: Ctx) -> Snapshot:
    """The Fleet figures from this process's cache (``fleetcache``), made on first use with the settings' period."""
    cache = getattr(request.app.state, "fleet_figures", None)
    if cache is None:
        cache = request.app.state.fleet_figures = FleetFiguresCache(ctx.settings.dashboard_fleet_counts_s)

    def compute() -> Snapshot:
        with ctx.db.read_scope() as session:
            return service.fleet_snapshot(session, ctx.settings)

    return cache.get(compute)


FleetFigures = Annotated[Snapshot, Depends(_fleet_figures)]


@router.get("/fleet", dependencies=[Login])
def fleet(request: Request, ctx: Ctx, db: ReadSession, presence: Presence, figures: FleetFigures,
          line: Annotated[str | None, Query(max_length=100)] = None,
          version: Annotated[str | None, Query(max_length=10, pattern="^[0-9]*$")] = None,
          tag: Annotated[str | None, Query(max_length=400)] = None,
          drift: bool = False,
          q: Annotated[str | None, Query(max_length=200)] = None,
          after: Annotated[str | None, Query(pattern=DEVICE_ID)] = None,
          before: Annotated[str | None, Query(pattern=DEVICE_ID)] = None) -> Response:
    """One page of the fleet, filtered by a GET form (an empty field: any), paged by device id."""
    f = device_store.InventoryFilter(line=line or None, version=int(version) if version else None,
                                     tags=devices_service.parse_tag_filter([tag] if tag else None), drift=drift,
                                     q=q or None)
    data = service.fleet_page(db, presence, ctx.settings, service.FleetQuery(f, after=after, before=before), figures)
    data["filters"] = {"line": line or "", "version": version or "", "tag": tag or "", "drift": drift, "q": q or ""}
    return render(request, "fleet.html", "fleet", "Fleet", data)


@router.get("/fleet/{device_id}", dependencies=[Login])
def device(request: Request, device_id: str, ctx: Ctx, db: ReadSession, presence: Presence) -> Response:
    data = service.device_page(db, presence, ctx.settings, device_id)
    return render(request, "device.html", "fleet", f"Device {device_id}", data)


@router.get("/models", dependencies=[Login])
def models(request: Request, db: ReadSession) -> Response:
    return render(request, "models.html", "models", "Models", service.models_page(db))


@router.get("/audit", dependencies=[Login])
def audit_log(request: Request, db: ReadSession,
              action: Annotated[str | None, Query(max_length=100)] = None,
              actor: Annotated[str | None, Query(max_length=200)] = None,
              target: Annotated[str | None, Query(max_length=200)] = None,
              outcome: Annotated[str | None, Query(pattern="^(|ok|refused|failed)$")] = None,
              since_s: Annotated[int, Query(ge=0, le=366 * 86400)] = 0,
              before: Annotated[int | None, Query(ge=1, le=2**31 - 1)] = None) -> Response:
    """Every state-changing call (issue 21), filtered by a GET form: nothing here changes anything."""
    f = audit_store.AuditFilter(action=action or None, actor=actor or None, target=target or None,
                                outcome=outcome or None,
                                since=utcnow() - timedelta(seconds=since_s) if since_s else None)
    data = service.audit_page(db, f, before)
    data["filters"] = {"action": action or "", "actor": actor or "", "target": target or "",
                       "outcome": outcome or "", "since_s": since_s}
    return render(request, "audit.html", "audit", "Audit", data)


@router.get("/live.json", dependencies=[Depends(require_login_api)])
def live(db: ReadSession, members: Members, figures: FleetFigures) -> dict[str, Any]:
    """The counts every page refreshes in place (polled every ``dashboard_refresh_s``)."""
    return {"values": service.live_values(db, members, figures)}
