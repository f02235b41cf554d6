"""Pure decisions of the gateway: which channel may open, and when a tunnel is wanted.

Nothing here touches a socket or the clock; callers pass ``now``.  Every
check denies by default: an instrument or port not in the hospital's own
configuration is refused whatever the broker asks, as is everything while
paused, and (in window-only mode) everything outside an approved window.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from gateway.config import Instrument
from wire import Mode

Span = tuple[datetime, datetime]


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    reason: str  # why it was refused, or "allowed"
    instrument: Instrument | None = None


class Allowlist:
    """The instruments and ports this hospital exposes; nothing else is reachable.

    The broker may name an instrument by its configured name or by its
    configured host; the gateway always connects to the configured host, never
    to a name the broker made up.
    """

    def __init__(self, instruments: Iterable[Instrument]) -> None:
        self._instruments = tuple(instruments)
        self._by_key: dict[str, Instrument] = {}
        for inst in self._instruments:
            self._by_key.setdefault(inst.name.lower(), inst)
            self._by_key.setdefault(inst.host.lower(), inst)

    @property
    def instruments(self) -> tuple[Instrument, ...]:
        return self._instruments

    def check(self, dest_host: str, dest_port: int) -> Decision:
        """Allowed only for a listed instrument and one of its listed ports."""
        inst = self._by_key.get(dest_host.lower())
        if inst is None:
            return Decision(False, "host is not on the gateway's allowlist")
        if dest_port not in inst.ports:
            return Decision(False, f"port {dest_port} is not listed for {inst.name}", inst)
        return Decision(True, "allowed", inst)


def active_window(windows: Sequence[Span], now: datetime) -> Span | None:
    """The window containing ``now`` that ends last (merged with overlapping ones)."""
    best: Span | None = None
    for start, end in windows:
        if start <= now < end and (best is None or end > best[1]):
            best = (start, end)
    if best is None:
        return None
    # extend across windows that overlap or touch the current one
    end = best[1]
    changed = True
    while changed:
        changed = False
        for s, e in windows:
            if s <= end < e:
                end, changed = e, True
    return (best[0], end)


def next_window_start(windows: Sequence[Span], now: datetime) -> datetime | None:
    starts = [s for s, e in windows if s > now and e > s]
    return min(starts) if starts else None


def tunnel_wanted(mode: Mode, paused: bool, windows: Sequence[Span], now: datetime) -> bool:
    """Whether the gateway should hold a tunnel right now."""
    if paused:
        return False
    if mode is Mode.ALWAYS:
        return True
    return active_window(windows, now) is not None


def channel_decision(
    allowlist: Allowlist,
    dest_host: str,
    dest_port: int,
    *,
    paused: bool,
    mode: Mode,
    windows: Sequence[Span],
    now: datetime,
) -> Decision:
    """The hospital's final word on one ``direct-tcpip`` request from the broker."""
    if paused:
        return Decision(False, "the gateway is paused by the hospital")
    decision = allowlist.check(dest_host, dest_port)
    if not decision.allowed:
        return decision
    if mode is Mode.WINDOW_ONLY and active_window(windows, now) is None:
        return Decision(False, "no approved window is open", decision.instrument)
    return decision
