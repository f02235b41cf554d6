"""The console's gateway page: the state of the hospital's own gateways.

For each gateway the caller may see (:meth:`~broker.access.gateways.GatewayService.list_gateways`:
a hospital's staff their hospital's, platform admins all; the page itself is
``console.gateway`` in the permission table) the page shows its name, version
and enrolment, and what the broker knows of its tunnel:

- **connected** to this replica, with its mode (``always``, or ``window-only``:
  the gateway holds the tunnel only inside approved windows) and since when;
- **connected through another replica** (the database's tunnel registry,
  several replicas only);
- **not connected**: a gateway that is paused by the hospital (its kill switch),
  window-only outside a window, or down looks the same from here; the page
  says so, and shows when the gateway last reported (its last inventory, sent
  on every connection);
- **revoked**: its enrolment was revoked (it cannot connect).

The tunnel side is read through :class:`TunnelStates`, found at
``app.state.gateway_tunnels`` (set by :mod:`broker.assembly`:
:class:`RegistryTunnelStates` over the tunnel registry); without it every
gateway is "not connected".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from broker.access.model import Gateway
from broker.console import i18n
from broker.console.routes import zone_of
from broker.console.web import PREFIX, Session, page, render, services_of

router = APIRouter(prefix=PREFIX, tags=["console"])

GatewaySession = Annotated[Session, Depends(page("console.gateway"))]


@dataclass(frozen=True, slots=True)
class TunnelState:
    """What the broker knows of one gateway's tunnel."""

    where: str  # "here", "elsewhere" (another replica) or "none"
    mode: str = ""  # "always" or "window-only" (known for a tunnel to this replica)
    since: datetime | None = None
    version: str = ""


class TunnelStates(Protocol):
    def state(self, gateway_id: str) -> TunnelState: ...


class TunnelView(Protocol):
    """A live tunnel (``broker.tunnel.endpoint.TunnelInfo``)."""

    @property
    def since(self) -> datetime: ...
    @property
    def mode(self) -> Any: ...
    @property
    def gateway_version(self) -> str: ...


class TunnelLookup(Protocol):
    """The tunnel registry of this replica (``broker.tunnel.endpoint.TunnelRegistry``)."""

    def info(self, gateway_id: str) -> TunnelView | None: ...


class RegistryTunnelStates:
    """:class:`TunnelStates` over this replica's tunnel registry and, with several
    replicas, ``holders`` (the other live replicas holding a gateway's tunnel)."""

    def __init__(
        self, registry: TunnelLookup, holders: Callable[[str], Sequence[object]] | None = None
    ) -> None:
        self._registry = registry
        self._holders = holders

    def state(self, gateway_id: str) -> TunnelState:
        info = self._registry.info(gateway_id)
        if info is not None:
            return TunnelState("here", str(info.mode), info.since, info.gateway_version)
        if self._holders is not None and self._holders(gateway_id):
            return TunnelState("elsewhere")
        return TunnelState("none")


_NONE = TunnelState("none")


def _row(gw: Gateway, states: TunnelStates | None, tz: Any) -> dict[str, Any]:
    tunnel = states.state(gw.id) if states is not None and gw.active else _NONE
    state = (
        "revoked"
        if not gw.active
        else {"here": "connected", "elsewhere": "connected_elsewhere"}.get(
            tunnel.where, "disconnected"
        )
    )
    return {
        "gw": gw,
        "state": state,
        "mode": tunnel.mode if tunnel.mode in ("always", "window-only") else "",
        "since": i18n.local_time(tunnel.since, tz),
        "version": tunnel.version or gw.version,
        "last_report": i18n.local_time(gw.last_inventory_at, tz),
        "enrolled": i18n.local_time(gw.enrolled_at, tz),
    }


def _rows(request: Request, session: Session) -> tuple[list[dict[str, Any]], str]:
    services = services_of(request)
    tz = zone_of(services, session)
    states: TunnelStates | None = getattr(request.app.state, "gateway_tunnels", None)
    found = services.gateways.list_gateways(session.actor)
    return [_row(gw, states, tz) for gw in found], str(tz.key)


@router.get("/gateway")
async def gateway(request: Request, session: GatewaySession) -> Response:
    """Our gateways: connected (mode, since), through another replica, not connected
    (last report), revoked."""
    rows, tz = await asyncio.to_thread(_rows, request, session)
    return render(request, "gateway.html", rows=rows, tz=tz)
