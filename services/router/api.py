"""The router's control plane: thin typed endpoints over `RouterService` (FastAPI).

Mutating endpoints need `Authorization: Bearer <ALA_ROUTER_TOKEN>`; with no token configured they refuse
everyone, so an unconfigured router can be watched but not steered.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import generate_latest
from pydantic import BaseModel, Field, create_model

from services.router.core import LiveConfig
from services.router.metrics import REGISTRY

if TYPE_CHECKING:
    from services.router.service import RouterService

bearer = HTTPBearer(auto_error=False, description="ALA_ROUTER_TOKEN")


def get_service(request: Request) -> RouterService:
    return request.app.state.router  # type: ignore[no-any-return]


ServiceDep = Annotated["RouterService", Depends(get_service)]


def require_admin(
    service: ServiceDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    token = service.settings.token.get_secret_value()
    if not token:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "control API is read-only: set ALA_ROUTER_TOKEN to enable it")
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"}
        )


AdminDep = Annotated[None, Depends(require_admin)]


class Status(BaseModel):
    enabled: bool
    strength: float
    learner_version: int
    actors: dict[str, int]
    """Known actors and their action counts."""
    active_targets: int


ConfigUpdate: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "ConfigUpdate",
    __doc__="Fields of `LiveConfig` to change; omitted ones keep their value. The result is validated as a whole.",
    **{
        name: (info.annotation | None, Field(None, description=info.description))
        for name, info in LiveConfig.model_fields.items()
    },
)


class KillResult(BaseModel):
    actors_cleared: list[str]


def create_app(service: RouterService) -> FastAPI:
    app = FastAPI(
        title="ALA router",
        description="Bounds, merges, expires and routes LLM advice as logit biases. Mutating endpoints need "
        "`Authorization: Bearer $ALA_ROUTER_TOKEN`.",
    )
    app.state.router = service

    @app.get("/status")
    def get_status(service: ServiceDep) -> Status:
        return service.status()

    @app.get("/config")
    def get_config(service: ServiceDep) -> LiveConfig:
        return service.router.config

    @app.put("/config", responses={401: {"description": "no or wrong token"}, 403: {"description": "no token set"}})
    def put_config(update: ConfigUpdate, service: ServiceDep, _: AdminDep) -> LiveConfig:  # type: ignore[valid-type]
        """Change the live configuration (validated as a whole; a bad value changes nothing)."""
        changes = update.model_dump(exclude_none=True)  # type: ignore[attr-defined]
        try:
            config = LiveConfig.model_validate(service.router.config.model_dump() | changes)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from exc
        service.set_config(config)
        return config

    @app.post("/kill", responses={401: {"description": "no or wrong token"}, 403: {"description": "no token set"}})
    async def kill(service: ServiceDep, _: AdminDep) -> KillResult:
        """Clear every bias on every actor now and disable the router until `PUT /config {"enabled": true}`."""
        return KillResult(actors_cleared=await service.kill())

    @app.get("/metrics", response_class=PlainTextResponse)
    def metrics() -> str:
        return generate_latest(REGISTRY).decode()

    return app
