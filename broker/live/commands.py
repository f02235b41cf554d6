"""Commands typed in an interactive shell, read back from the relayed terminal stream.

hoshu installs nothing on instruments, so it rebuilds each command line the
engineer submits from the two streams it already relays: the engineer's
keystrokes and the instrument's output.  A terminal emulator (pyte) replays the
output, so line editing, history recall and tab completion leave on the screen
exactly the line the shell holds; the line is read when the shell echoes the
engineer's Enter, with the prompt that stood left of the cursor when typing
began.

- **Prompt.** The text left of the cursor at the first keystroke of a line.  A
  line becomes a command only when that text looks like a shell prompt (it ends
  in ``$``, ``#``, ``%`` or ``>``, then spaces); what is typed at ``Password:``
  or into a program reading the terminal is not a command.
- **Multi-line input.** A line typed at the continuation prompt ``>`` (a ``for``
  loop, a here-document, an open quote) joins the command before it with a
  newline; Ctrl-C there drops the whole command, as the shell does.
- **Ctrl-C** drops the line being typed.
- **Full-screen programs** (vi, top, less) switch to the terminal's alternate
  screen; until they leave it, keystrokes are not commands and their output is
  not emulated.
- **Working directory** from the prompt (``user@host:/dir$``, ``[user@host dir]$``)
  or from the window title the shell sets, where visible; else none.

Bounded: the screen is at most :data:`MAX_COLS` x :data:`MAX_ROWS`; an escape
sequence left open past :data:`MAX_SEQUENCE` characters is dropped; a command
is cut at :data:`MAX_COMMAND` characters; the queue of unread stream data is at
most :data:`MAX_BACKLOG` bytes, past which the backlog is dropped and a gap is
counted (the session is never held up).  Output after the first
:data:`EMULATED_OUTPUT` bytes that follow a keystroke is not emulated (bulk output
of a command): only its last :data:`TAIL` bytes are, when the engineer types
again, so the next prompt is read right.  Invalid UTF-8 becomes U+FFFD.

:class:`CommandRules` is a hospital's command policy: ``deny`` and ``hold``
patterns (Python regular expressions searched in the command line).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyte

log = logging.getLogger(__name__)

MAX_COLS = 512
MAX_ROWS = 256
MAX_SEQUENCE = 4096
MAX_COMMAND = 4096
MAX_LINES = 200  # lines of one multi-line command
MAX_BACKLOG = 4 * 1024 * 1024
EMULATED_OUTPUT = 8 * 1024
TAIL = 4096
_FEED_SLICE = 1024

_PROMPT_END = re.compile(r"[$#%>]\s*$")
_CONTINUATION = re.compile(r"^\s*>\s*$")
_CWD_COLON = re.compile(r"[\w.-]+@[\w.-]+:\s*([^\s$#%>]+)\s*[$#%>]\s*$")
_CWD_BRACKET = re.compile(r"\[[\w.-]+@[\w.-]+\s+([^\]]+)\]\s*[$#%>]\s*$")
_CWD_TITLE = re.compile(r"^[\w.-]+@[\w.-]+:\s*((?:~|/)\S*)\s*$")
# switching to the alternate screen and back: xterm's 1049 and 1047, the older 47
_ALT_ON = (b"\x1b[?1049h", b"\x1b[?1047h", b"\x1b[?47h")
_ALT_OFF = (b"\x1b[?1049l", b"\x1b[?1047l", b"\x1b[?47l")
_ALT_CARRY = 8  # bytes kept between chunks: a switch split across packets is still seen
# keys that submit the line: Enter (CR), Ctrl-J (LF), and readline's Ctrl-O
# (operate-and-get-next)
_ENTER_KEYS = "\r\n\x0f"
ENTER_BYTES = (b"\r", b"\n", b"\x0f")
_READLINE_LINE = b"\x1b[?2004h"
_PASTE_ON = "\x1b[200~"
_PASTE_OFF = "\x1b[201~"


@dataclass(frozen=True, slots=True)
class Command:
    """One command line as the shell received it.

    ``offset`` is the time in seconds into the recording at which the engineer
    pressed Enter (of its first line, for a multi-line command); ``prompt`` the
    prompt it was typed at; ``cwd`` the working directory where the prompt or
    the window title shows it.
    """

    text: str
    offset: float
    prompt: str
    cwd: str | None = None
    truncated: bool = False


@dataclass(slots=True)
class _Pending:
    lines: list[str]
    offset: float
    prompt: str
    cwd: str | None
    truncated: bool = False


class _Screen(pyte.Screen):
    """pyte's screen, counting the lines scrolled off the top (the prompt's row moves)."""

    def __init__(self, columns: int, lines: int) -> None:
        super().__init__(columns, lines)
        self.scrolled = 0

    # Erasing costs one step per row or character on the screen here (pyte writes
    # every cell): a flood of "erase" sequences cannot make the broker spin.
    def erase_in_display(self, how: int = 0, *args: Any, **kwargs: Any) -> None:
        y = self.cursor.y
        if how == 0:
            self.erase_in_line(0)
            rows = range(y + 1, self.lines)
        elif how == 1:
            self.erase_in_line(1)
            rows = range(y)
        else:
            self.buffer.clear()
            return
        for r in rows:
            self.buffer.pop(r, None)

    def erase_in_line(self, how: int = 0, private: bool = False) -> None:
        line = self.buffer.get(self.cursor.y)
        if not line:
            return
        if how == 2:
            line.clear()
            return
        x = self.cursor.x
        for k in [k for k in line if (k >= x if how == 0 else k <= x)]:
            del line[k]

    def index(self) -> None:
        _top, bottom = self.margins or (0, self.lines - 1)
        if self.cursor.y == bottom:
            self.scrolled += 1
        super().index()


def _clamp(width: int, height: int) -> tuple[int, int]:
    return max(2, min(int(width or 80), MAX_COLS)), max(2, min(int(height or 24), MAX_ROWS))


class CommandExtractor:
    """Rebuilds the command lines of one interactive shell.  Not thread-safe.

    Feed it with :meth:`output`, :meth:`input` and :meth:`resize` in the order the
    relay saw them (these only queue: cheap), then call :meth:`process` to do the
    work; it returns the commands completed so far.  ``clock`` gives the time
    into the recording.
    """

    def __init__(self, width: int, height: int, clock: Callable[[], float]) -> None:
        cols, rows = _clamp(width, height)
        self._clock = clock
        self._screen = _Screen(cols, rows)
        self._stream = pyte.Stream(self._screen)
        self._out_dec = codecs.getincrementaldecoder("utf-8")("replace")
        self._in_dec = codecs.getincrementaldecoder("utf-8")("replace")
        self._queue: deque[tuple[str, float, Any]] = deque()
        self._queued = 0
        self._emulated = 0  # bytes fed to the emulator so far
        self.gaps = 0  # times the backlog was dropped
        self.skipped = 0  # output bytes not emulated (bulk output)
        self._open_seq = 0
        self._alt = False
        self._alt_carry = b""
        self._since_input = 0  # output bytes since the last keystroke
        self._tail = bytearray()
        self._tail_skipped = False
        # the line being typed
        self._typing = False
        self._prompt = ""
        self._prompt_row = 0
        self._prompt_scrolled = 0
        self._keys: list[str] = []  # printable keystrokes, for line_typed()
        self._tabbed = False  # Tab pressed on this line: a completion list may follow
        self._readline = False  # the shell announces each new line (bracketed paste on)
        self._last_prompt = ""  # the prompt of the last command (not a continuation)
        self._line_start = False  # bash began reading a line since the last Enter came back
        self._paste_carry = b""
        self._in_paste = False
        self._last_cr = False
        self._submits: deque[float] = deque()  # Enters whose echo has not come back yet
        self._pending: _Pending | None = None  # a command that may go on at ">"
        self._done: list[Command] = []

    # --- feeding (cheap: queues) ---------------------------------------------------------
    def output(self, data: bytes) -> None:
        self._put("o", data)

    def input(self, data: bytes) -> None:
        self._put("i", data)

    def resize(self, width: int, height: int) -> None:
        self._queue.append(("r", self._clock(), (width, height)))

    def _put(self, kind: str, data: bytes) -> None:
        if not data:
            return
        if self._queued + len(data) > MAX_BACKLOG:
            self._gap()
        self._queue.append((kind, self._clock(), bytes(data)))
        self._queued += len(data)

    def _gap(self) -> None:
        """Extraction fell too far behind: drop what is queued, and start over."""
        self.gaps += 1
        alt = self._alt
        for kind, _t, data in self._queue:
            if kind == "o":
                alt = self._alt_after(data, alt)
        self._queue.clear()
        self._queued = 0
        self._alt = alt
        self._reset_line()
        self._submits.clear()
        self._pending = None
        self._screen.reset()

    @property
    def backlog(self) -> int:
        """Bytes queued and not yet processed."""
        return self._queued

    # --- processing ---------------------------------------------------------------------
    def process(self, budget: int | None = None) -> list[Command]:
        """Work through the queue (emulating at most about ``budget`` bytes: output that is
        only skipped costs next to nothing); return the commands completed."""
        start = self._emulated
        while self._queue and (budget is None or self._emulated - start < budget):
            kind, t, data = self._queue.popleft()
            if kind == "r":
                self._resize(*data)
                continue
            self._queued -= len(data)
            if kind == "o":
                self._output(data, t)
            else:
                self._input(data, t)
        done, self._done = self._done, []
        return done

    def close(self) -> list[Command]:
        """Everything processed; a command still open at ``>`` counts as submitted."""
        done = self.process()
        self._flush_pending()
        done += self._done
        self._done = []
        return done

    def line_now(self) -> str:
        """The line the shell holds, as the screen shows it after what was processed."""
        if not self._typing or self._alt:
            return ""
        return self._read_line()

    def line_typed(self) -> str:
        """The printable keys typed since the line began, Backspace applied (no editing)."""
        return "".join(self._keys)

    @property
    def alternate_screen(self) -> bool:
        return self._alt

    def _resize(self, width: int, height: int) -> None:
        cols, rows = _clamp(width, height)
        self._screen.resize(rows, cols)

    # --- output ---------------------------------------------------------------------------
    def _alt_after(self, data: bytes, alt: bool) -> bool:
        if (data.find(0x1B) < 0 or b"\x1b[?" not in data) and b"\x1b" not in self._alt_carry:
            self._alt_carry = data[-_ALT_CARRY:]
            return alt
        probe = self._alt_carry + data
        on = max(probe.rfind(s) for s in _ALT_ON)
        off = max(probe.rfind(s) for s in _ALT_OFF)
        self._alt_carry = probe[-_ALT_CARRY:]
        if on == off:  # neither
            return alt
        return on > off

    def _output(self, data: bytes, t: float) -> None:
        if self._alt:
            # a full-screen program: only watch for its leaving the alternate screen
            probe = self._alt_carry + data
            offs = [i + len(s) for s in _ALT_OFF if (i := probe.rfind(s)) >= 0]
            ons = [probe.rfind(s) for s in _ALT_ON]
            if not offs or max(ons) > max(offs):
                self._alt_carry = probe[-_ALT_CARRY:]
                return
            self._alt = False
            self._alt_carry = b""
            data = probe[max(offs) :]
            self._reset_line()
        if self._since_input >= EMULATED_OUTPUT and not self._submits:
            self._bulk(data)
            return
        room = max(0, EMULATED_OUTPUT - self._since_input)
        if len(data) > room and not self._submits:
            head, rest = data[:room], data[room:]
            self._emulate(head, t)
            if not self._alt:
                self._bulk(rest)
            return
        self._emulate(data, t)

    def _bulk(self, data: bytes) -> None:
        """Output past the emulated part: keep a tail, watch for the alternate screen."""
        self.skipped += len(data)
        self._since_input += len(data)
        if len(data) >= TAIL:
            self._tail[:] = data[-TAIL:]
        else:
            self._tail += data
            if len(self._tail) > TAIL:
                del self._tail[: len(self._tail) - TAIL]
        self._tail_skipped = True
        self._alt = self._alt_after(data, self._alt)
        if self._alt:
            self._tail.clear()
            self._tail_skipped = False

    def _catch_up(self) -> None:
        """Before a keystroke: show the screen as the bulk output left it (its tail)."""
        if not self._tail_skipped:
            return
        tail = bytes(self._tail)
        self._tail.clear()
        self._tail_skipped = False
        nl = tail.find(b"\n")
        self._screen.reset()
        self._stream = pyte.Stream(self._screen)
        self._out_dec.reset()
        self._open_seq = 0
        self._feed(tail[nl + 1 :] if nl >= 0 else tail)

    def _emulate(self, data: bytes, t: float) -> None:
        self._since_input += len(data)
        # the alternate screen may start inside this chunk: emulate up to it only
        probe = self._alt_carry + data
        starts = [i for s in _ALT_ON if (i := probe.find(s)) >= 0]
        if starts:
            cut = max(0, min(starts) - len(self._alt_carry))
            self._emulate_text(data[:cut], t)
            self._alt = True
            self._alt_carry = b""
            self._submits.clear()
            self._reset_line()
            self._output(data[cut:], t)  # it may leave again in the same chunk
            return
        self._alt_carry = probe[-_ALT_CARRY:]
        self._emulate_text(data, t)

    def _emulate_text(self, data: bytes, t: float) -> None:
        # where bash starts reading a line (relative to data; a sequence split across
        # chunks starts before 0): the carry is one byte short of a whole sequence
        carry = self._paste_carry
        probe = carry + data
        self._paste_carry = probe[-(len(_READLINE_LINE) - 1) :]
        starts: list[int] = []
        at = probe.find(_READLINE_LINE)
        while at >= 0:
            starts.append(at - len(carry))
            at = probe.find(_READLINE_LINE, at + 1)
        new_line = bool(starts)
        self._readline = self._readline or new_line
        if not self._submits:
            if self._typing and not self._readline and not self._tabbed and b"\n" in data:
                # a new line began under the keys typed (they went to a program): the
                # next key starts a line at whatever prompt follows
                self._reset_line()
            self._feed(data)
        else:
            # an Enter is on its way back: the line is read just before its newline
            start = 0
            while self._submits:
                nl = data.find(b"\n", start)
                if nl < 0:
                    break
                seg = data[start:nl]
                if any(start - len(carry) <= p < nl for p in starts):
                    self._line_start = True
                self._feed(seg)
                start = nl + 1
                if not self._typing and self._readline and not self._line_start:
                    self._feed(b"\n")  # the terminal echoing keys typed ahead, not bash's line
                    continue
                if not self._typing and self._readline:
                    self._typing, self._prompt = True, ""  # typed ahead: by the last prompt
                self._line_start = False
                self._submitted(self._submits.popleft())
                self._feed(b"\n")
            if self._submits and any(p >= start - len(carry) for p in starts):
                self._line_start = True  # bash began a line after the last newline here
            self._feed(data[start:])
        if new_line and not self._submits:
            # bash (readline) switches bracketed paste on as it starts reading a line:
            # keys typed before that were read by a program, not typed at a prompt
            self._reset_line()

    def _feed(self, data: bytes) -> None:
        self._emulated += len(data) + 1
        text = self._out_dec.decode(data)
        for i in range(0, len(text), _FEED_SLICE):
            piece = text[i : i + _FEED_SLICE]
            try:
                self._stream.feed(piece)
            except Exception:  # a malformed sequence (a huge number): pyte resets its parser
                self._open_seq = 0
                continue
            if self._stream._taking_plain_text:  # noqa: SLF001  (pyte keeps no public flag)
                self._open_seq = 0
            else:
                self._open_seq += len(piece)
                if self._open_seq > MAX_SEQUENCE:  # an escape sequence left open: drop it
                    self._stream._initialize_parser()  # noqa: SLF001
                    self._open_seq = 0

    # --- input ----------------------------------------------------------------------------
    def _input(self, data: bytes, t: float) -> None:
        self._emulated += len(data)
        if self._alt:
            self._last_cr = False
            return
        text = self._in_dec.decode(data)
        i = 0
        while i < len(text):
            if text.startswith(_PASTE_ON, i):
                self._start_typing()
                self._in_paste = True
                i += len(_PASTE_ON)
                continue
            if text.startswith(_PASTE_OFF, i):
                self._in_paste = False
                i += len(_PASTE_OFF)
                continue
            ch = text[i]
            i += 1
            if ch == "\n" and self._last_cr:
                self._last_cr = False
                continue
            self._last_cr = ch == "\r"
            if ch in _ENTER_KEYS and not self._in_paste:
                self._enter(t)
            elif ch == "\x03":  # Ctrl-C: the line (and a multi-line command open at ">") is dropped
                if _CONTINUATION.match(self._prompt if self._typing else self._left_of_cursor()):
                    self._pending = None
                else:
                    self._flush_pending()
                self._submits.clear()
                self._reset_line()
            elif ch == "\x04" and not self._typing:  # Ctrl-D on an empty line
                continue
            else:
                self._start_typing()
                if ch in "\x7f\x08":
                    if self._keys:
                        self._keys.pop()
                elif ch == "\x15":  # Ctrl-U
                    self._keys.clear()
                elif ch == "\t":
                    self._tabbed = True
                elif ch.isprintable() and len(self._keys) < MAX_COMMAND:
                    self._keys.append(ch)

    def _start_typing(self) -> None:
        self._since_input = 0
        if self._typing:
            return
        self._catch_up()
        s = self._screen
        self._typing = True
        self._prompt = self._left_of_cursor()
        self._prompt_row = s.cursor.y
        self._prompt_scrolled = s.scrolled
        if not _CONTINUATION.match(self._prompt):
            self._flush_pending()  # a command open at ">" ends where a new one begins

    def _enter(self, t: float) -> None:
        self._since_input = 0
        self._keys.clear()
        if not self._typing:  # Enter on a line nothing was typed on: read it anyway
            self._start_typing()
        self._submits.append(t)

    def _left_of_cursor(self) -> str:
        s = self._screen
        row = s.buffer[s.cursor.y]
        return "".join(row[x].data for x in range(min(s.cursor.x, s.columns)))

    def _reset_line(self) -> None:
        self._typing = False
        self._prompt = ""
        self._keys.clear()
        self._tabbed = False
        self._in_paste = False

    # --- reading the line -----------------------------------------------------------------
    def _row(self, y: int) -> str:
        s = self._screen
        row = s.buffer[y]
        return "".join(row[x].data for x in range(s.columns))

    def _read_line(self) -> str:
        """The logical line at the cursor, from the prompt's row, without the prompt."""
        s = self._screen
        y = s.cursor.y
        start = self._prompt_row - (s.scrolled - self._prompt_scrolled)
        # the prompt's row: the nearest at or above the cursor, down to where it was
        # typed (moved up by the lines scrolled since); a completion list between the
        # two drew the prompt again lower down
        top = max(0, start) if self._prompt.strip() else y
        for up in range(y, max(0, start) - 1, -1):
            if self._row(up).startswith(self._prompt):
                top = up
                break
        rows = [self._row(r) for r in range(top, y + 1)]
        # rows the line wrapped over are full: joined as they are, no newline between
        text = ("".join(rows[:-1]) + rows[-1]).rstrip()
        prompt = self._prompt.rstrip()
        if text.startswith(self._prompt):
            text = text[len(self._prompt) :]
        elif prompt and text.startswith(prompt):
            text = text[len(prompt) :]
        return text.rstrip(" ")

    def _cwd(self, prompt: str) -> str | None:
        if m := _CWD_COLON.search(prompt) or _CWD_BRACKET.search(prompt):
            return m.group(1)
        title = str(self._screen.title or "")
        if m := _CWD_TITLE.match(title):
            return m.group(1)
        return None

    def _submitted(self, t: float) -> None:
        if not self._typing:
            return
        line = self._read_line()
        prompt = self._prompt
        if not _PROMPT_END.search(prompt.rstrip() or "-") and self._readline and self._last_prompt:
            # typed ahead: the keys came before bash drew its prompt (and were echoed
            # after it); the line is on the row that starts with the prompt seen last
            # (on the cursor's row only: a line above is another line's output)
            s = self._screen
            if self._row(s.cursor.y).startswith(self._last_prompt):
                self._prompt, self._prompt_row = self._last_prompt, s.cursor.y
                self._prompt_scrolled = s.scrolled
                line, prompt = self._read_line(), self._last_prompt
        self._reset_line()
        if not _PROMPT_END.search(prompt.rstrip() or "-"):
            return  # not typed at a shell prompt (a password, a program reading input)
        if not _CONTINUATION.match(prompt):
            self._last_prompt = prompt
        if _CONTINUATION.match(prompt) and self._pending is not None:
            p = self._pending
            if len(p.lines) < MAX_LINES:
                p.lines.append(line)
            else:
                p.truncated = True
            return
        self._flush_pending()
        if not line.strip() and not _CONTINUATION.match(prompt):
            return
        self._pending = _Pending([line], t, prompt.rstrip(), self._cwd(prompt.rstrip()))

    def _flush_pending(self) -> None:
        p, self._pending = self._pending, None
        if p is None:
            return
        text = "\n".join(p.lines).strip("\n")
        if not text.strip():
            return
        truncated = p.truncated or len(text) > MAX_COMMAND
        self._done.append(Command(text[:MAX_COMMAND], p.offset, p.prompt, p.cwd, truncated))

    def submitted_so_far(self) -> list[Command]:
        """Commands completed, the one still open at ``>`` included (for a live view)."""
        done = list(self._done)
        if self._pending is not None:
            p = self._pending
            done.append(Command("\n".join(p.lines), p.offset, p.prompt, p.cwd, p.truncated))
        return done


# --- a hospital's command policy ----------------------------------------------------------
DENY = "deny"
HOLD = "hold"


@dataclass(frozen=True, slots=True)
class CommandRule:
    """``action`` (deny or hold) for a command line in which ``pattern`` is found."""

    action: str
    pattern: str
    reason: str = ""
    compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.action not in (DENY, HOLD):
            raise ValueError(f"a command rule is deny or hold, not {self.action!r}")
        try:
            object.__setattr__(self, "compiled", re.compile(self.pattern))
        except re.error as exc:
            raise ValueError(f"command pattern {self.pattern!r} is not valid: {exc}") from exc


@dataclass(frozen=True, slots=True)
class CommandRules:
    """Deny and hold rules; deny wins.  Empty: the stream is relayed untouched."""

    rules: tuple[CommandRule, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.rules)

    def match(self, lines: Iterable[str]) -> CommandRule | None:
        """The first deny rule found in any of ``lines``, else the first hold rule, else None."""
        texts = [line[:MAX_COMMAND] for line in lines if line]
        held: CommandRule | None = None
        for rule in self.rules:
            if any(rule.compiled.search(text) for text in texts):
                if rule.action == DENY:
                    return rule
                held = held or rule
        return held

    @classmethod
    def parse(cls, raw: Iterable[dict[str, str]]) -> CommandRules:
        """From stored rows ``{"action", "pattern", "reason"}``; raises ValueError."""
        return cls(
            tuple(
                CommandRule(str(r["action"]), str(r["pattern"]), str(r.get("reason", "")))
                for r in raw
            )
        )


# Suggested for analyzer PCs (docs/auditor.md): what destroys the PC, and what stops it.
SUGGESTED_ANALYZER_RULES: tuple[dict[str, str], ...] = (
    {
        "action": DENY,
        "pattern": r"\brm\s+(-\S+\s+)*(-\S*[rR]\S*|--recursive)\s+(-\S+\s+)*/+\*?(\s|;|&|$)",
        "reason": "deleting the whole file system",
    },
    {"action": DENY, "pattern": r"\bmkfs(\.\w+)?\b", "reason": "formatting a disk"},
    {"action": DENY, "pattern": r"\bdd\b.*\bof=/dev/", "reason": "writing over a device"},
    {
        "action": HOLD,
        "pattern": r"(^|[;&|(]\s*|\bsudo\s+|\bsystemctl\s+)(shutdown|reboot|poweroff|halt)\b",
        "reason": "stopping or restarting the analyzer PC",
    },
)


# --- the relay's side: reading commands beside a live shell -------------------------------
SLICE = 2048  # bytes processed before the event loop gets a turn
SETTLE_QUIET_S = 0.1  # before judging a line: the shell's echo has been quiet this long
SETTLE_MOST_S = 1.5


class CommandWatch:
    """A :class:`CommandExtractor` beside one relayed shell.

    The relay hands it every chunk (:meth:`output`, :meth:`input`,
    :meth:`resize`: queued, never awaited) and a task works the queue in small
    slices, calling ``on_command`` for each command.  An error inside extraction
    is logged and extraction stops: the session goes on, as it is recorded.
    With ``rules``, :meth:`judge` tells the relay what to do with an Enter.
    """

    def __init__(
        self,
        extractor: CommandExtractor,
        on_command: Callable[[Command], None],
        rules: CommandRules | None = None,
    ) -> None:
        self.extractor = extractor
        self.rules = rules or CommandRules()
        self._on_command = on_command
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_output = 0.0
        self.broken = False
        # a refused line: (rule, line) -> what the engineer is told (the relay writes it)
        self.on_refused: Callable[[CommandRule, str], bytes] = lambda _r, _l: b""
        # a held line: (rule, line, tell) -> allowed?  None: a hold rule refuses at once
        self.on_held: Callable[[CommandRule, str, Callable[[bytes], None]], Awaitable[bool]] | None
        self.on_held = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def output(self, data: bytes) -> None:
        if not self.broken:
            self.extractor.output(data)
            self._last_output = time.monotonic()
            self._wake.set()

    def input(self, data: bytes) -> None:
        if not self.broken:
            self.extractor.input(data)
            self._wake.set()

    def resize(self, width: int, height: int) -> None:
        if not self.broken:
            self.extractor.resize(width, height)

    def _work(self, budget: int | None) -> None:
        try:
            found = self.extractor.process(budget)
        except Exception:
            log.exception("command extraction failed; the session goes on without it")
            self.broken = True
            return
        for cmd in found:
            try:
                self._on_command(cmd)
            except Exception:
                log.exception("a shell command could not be reported")

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.extractor.backlog and not self.broken:
                self._work(SLICE)
                await asyncio.sleep(0)

    async def judge(self) -> tuple[CommandRule | None, str]:
        """At an Enter: the rule the line matches (None: send it) and the line.

        Waits until the shell's echo has been quiet for :data:`SETTLE_QUIET_S`
        (at most :data:`SETTLE_MOST_S`), so the screen holds what was typed; the
        keys typed are judged too, so a line whose echo is late is not let through.
        """
        if not self.rules or self.extractor.alternate_screen:
            return None, ""
        if self.broken:  # fail closed: a line that cannot be read is not sent
            return CommandRule(DENY, ".", "the broker cannot read commands here"), ""
        deadline = time.monotonic() + SETTLE_MOST_S
        while True:
            quiet = time.monotonic() - self._last_output
            if quiet >= SETTLE_QUIET_S or time.monotonic() >= deadline:
                break
            await asyncio.sleep(min(SETTLE_QUIET_S - quiet, max(0.0, deadline - time.monotonic())))
        self._work(None)
        ex = self.extractor
        shown, typed = ex.line_now(), ex.line_typed()
        return self.rules.match([shown, typed]), shown or typed

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self.broken:
            return
        try:
            found = self.extractor.close()
        except Exception:
            log.exception("command extraction failed at the end of the session")
            return
        for cmd in found:
            with contextlib.suppress(Exception):
                self._on_command(cmd)
