"""Who is told what: one organisation's notification settings, shown and set.

The one place the API (``/v1/notifications/{org}``) and the console's notifications page
read and change an organisation's channels (:class:`broker.console.notify.Channels`),
so both refuse the same callers the same way and write the same event.

- Reading and setting are the permission table's ``notifications.show`` /
  ``notifications.update`` (hospital and platform admins), checked by the caller's route;
  here: a hospital admin only their own organisation's (anyone else's is
  :class:`PermissionDenied`; no such organisation is :class:`NotFound`).
- The webhook's HMAC key is sealed with the control plane's secret box before it is
  stored and is never shown again: what is shown is whether one is set.  An empty key
  keeps the stored one; ``clear_secret`` removes it (then the broker's key signs).
- The Microsoft Teams URL is a bearer credential (whoever holds it posts to the
  channel): it is sealed with the same box before it is stored (in the settings row and
  in each outbox row for Teams; opened only to send), and it is never shown again
  either, only its host and last four characters (:attr:`Shown.teams_hint`).  An empty
  URL keeps the stored one; ``clear_teams`` removes it; changing it means typing the
  whole URL again.  A URL an earlier version stored in the clear still works and is
  sealed the next time the settings are saved.
- A change is ``admin.change`` (``ObjectType`` ``notification_settings``) with what
  changed in outline (kinds, counts, whether a URL or key is set): no URL (a Teams URL
  is a credential), no address, no key.
- Bad input (an address, a URL that is not https:// (http:// only where the broker's
  ``notify_allow_http`` allows it: tests and labs), an unknown kind, a key shorter than
  16 characters) is :class:`InvalidInput` and nothing changes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import sqlalchemy as sa

from broker.access.errors import InvalidInput, NotFound, PermissionDenied
from broker.access.model import Org, OrgKind
from broker.access.ports import Actor
from broker.access.services import Services
from broker.console.notify import (
    CHOOSABLE,
    Channels,
    load_channels,
    open_teams_url,
    save_channels,
    seal_teams_url,
)

SECRET_MIN = 16
SECRET_MAX = 256


@dataclass(frozen=True, slots=True)
class Shown:
    """An organisation's settings as shown: the key only as whether one is set."""

    org: Org
    channels: Channels  # as stored: the Teams URL sealed
    set: bool  # chosen by the organisation (else: the defaults)
    teams_hint: str = ""  # the stored Teams URL as shown: host and last four ('' none)

    @property
    def secret_set(self) -> bool:
        return bool(self.channels.webhook_secret)


def teams_hint(url: str) -> str:
    """``host …last4`` of a Teams URL: enough to recognise it, too little to use it."""
    if not url:
        return ""
    host = (urlsplit(url).hostname or "?")[:80]
    return f"{host} …{url[-4:]}" if len(url) > len(host) + 12 else f"{host} …"


def org_for(services: Services, actor: Actor, ref: str) -> Org:
    """The organisation named (or with id) ``ref``, if ``actor`` may see its settings."""
    with services.ctx.uow() as tx:
        org = tx.one(Org, name=ref) or tx.get(Org, ref)
    if org is None:
        raise NotFound(f"no organisation {ref!r}")
    if actor.org_kind != OrgKind.PLATFORM and actor.org_id != org.id:
        raise PermissionDenied("only the organisation's own admin sets its notifications")
    return org


def _shown(services: Services, org: Org, channels: Channels, chosen: bool) -> Shown:
    url = open_teams_url(services.ctx.secrets, channels.teams_url)
    return Shown(org, channels, chosen, teams_hint(url))


def show(services: Services, engine: sa.Engine, actor: Actor, ref: str) -> Shown:
    org = org_for(services, actor, ref)
    chosen = load_channels(engine, org.id)
    return _shown(services, org, chosen or Channels(), chosen is not None)


def change(
    services: Services,
    engine: sa.Engine,
    actor: Actor,
    ref: str,
    wanted: Channels,
    *,
    secret: str = "",
    clear_secret: bool = False,
    clear_teams: bool = False,
    allow_http: bool = False,
) -> Shown:
    """Set ``ref``'s channels to ``wanted`` (its ``webhook_secret`` ignored: ``secret``
    is the new key in plain text, sealed here; empty keeps the stored one; an empty
    ``teams_url`` keeps the stored URL, ``clear_teams`` removes it)."""
    org = org_for(services, actor, ref)
    if set(wanted.kinds) - set(CHOOSABLE):
        raise InvalidInput("unknown notification kind", code="invalid_kind")
    secret = secret.strip()
    if secret and not SECRET_MIN <= len(secret) <= SECRET_MAX:
        raise InvalidInput(
            f"the webhook key must be {SECRET_MIN} to {SECRET_MAX} characters",
            code="weak_webhook_key",
        )
    before = load_channels(engine, org.id) or Channels()
    if clear_secret:
        sealed = ""
    elif secret:
        sealed = services.ctx.secrets.seal(secret)
    else:
        sealed = before.webhook_secret
    teams = "" if clear_teams else (wanted.teams_url or before.teams_url)
    try:
        # sealed here, so what is shown and kept below is what is stored
        teams = seal_teams_url(services.ctx.secrets, teams, allow_http=allow_http)
        chosen = replace(wanted, webhook_secret=sealed, teams_url=teams)
        save_channels(
            engine,
            org.id,
            chosen,
            services.ctx.now(),
            allow_http=allow_http,
            box=services.ctx.secrets,
        )
    except ValueError as exc:
        raise InvalidInput(str(exc)) from exc
    services.ctx.emit(
        "admin.change",
        actor,
        Operation="set",
        ObjectType="notification_settings",
        Object=org.id,
        HospitalId=org.id if org.kind == OrgKind.HOSPITAL else None,
        details={
            "changes": {
                "email": chosen.email,
                "emails": len(chosen.emails),
                "teams": bool(chosen.teams_url),
                "teams_url": "removed"
                if clear_teams and before.teams_url
                else ("set" if wanted.teams_url and not clear_teams else "kept"),
                "webhook": bool(chosen.webhook_url),
                "kinds": list(chosen.kinds),
                "webhook_key": "set" if secret else ("removed" if clear_secret else "kept"),
            }
        },
    )
    return _shown(services, org, chosen, True)
