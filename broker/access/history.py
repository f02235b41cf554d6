"""State changes go through here: checked against the table, kept as history."""

from __future__ import annotations

from broker.access import states
from broker.access.model import AccessRequest, Grant, Transition
from broker.access.ports import Actor, Context, Tx


def move(
    ctx: Context,
    tx: Tx,
    obj: AccessRequest | Grant,
    target: str,
    actor: Actor | None,
    comment: str = "",
) -> None:
    """Change ``obj.status`` to ``target`` (raises IllegalTransition) and record it."""
    kind = "request" if isinstance(obj, AccessRequest) else "grant"
    states.check(kind, obj.status, target)
    tx.add(
        Transition(
            ctx.new_id(),
            kind,
            obj.id,
            obj.status,
            target,
            ctx.now(),
            actor.user_id if actor else None,
            comment[:2000],
        )
    )
    obj.status = target
    tx.save(obj)
