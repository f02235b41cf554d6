"""Raw paths around the recorder and the file checks, and how they are recognised.

Two rules, both pure (no sockets) so the front door's hooks stay thin:

* :func:`interactive_port` -- a ``direct-tcpip`` forward must never reach an
  instrument's interactive port (its sshd, RDP, VNC): a forward is not recorded,
  so a raw channel to sshd would be an unrecorded shell with no file checks.
  A port is interactive when it is the instrument's SSH port, a well-known
  SSH/RDP/VNC port, or marked by the inventory: for an instrument marked
  ``ssh``/``sftp``, the port the gateway probes for its host key
  (:func:`gateway.inventory.probe_one`: 22 if listed, else the first one); for
  one marked ``rdp``/``vnc`` without its standard port, every listed port (the
  inventory does not say which one is the desktop: fail closed).  A forward to any other
  port whose server greets with an SSH or VNC banner is cut off before the
  banner reaches the engineer (:func:`interactive_banner`).
* :func:`transfer_program` -- exec of a program that moves files (an SFTP
  server, ``scp`` in server mode, ``rsync --server``, ZMODEM) would move files
  past the broker's SFTP proxy, which is where file transfer is granted,
  scanned and logged.  The command is parsed as a shell would split it:
  operators, ``sh -c``/``eval`` strings, leading ``NAME=value`` assignments,
  wrappers (``exec``, ``env``, ``nice``, ``sudo``, ``timeout`` ...) and
  absolute paths.  A program word the broker cannot resolve (``$var``,
  ``$(...)``, a backquote) or a command that does not parse is refused as well:
  deny by default.

What the second rule cannot see (a shell fed commands on stdin, ``cat > f``,
``base64 -d``) still passes, and is recorded byte for byte (``docs/engineer.md``).
"""

from __future__ import annotations

import fnmatch
import re
import shlex
from dataclasses import dataclass

from broker.access.door import InstrumentTarget

SSH_PORT = 22
RDP_PORT = 3389
VNC_PORTS = range(5900, 6000)  # display :0 .. :99
_WELL_KNOWN = {"ssh": SSH_PORT, "sftp": SSH_PORT, "rdp": RDP_PORT, "vnc": VNC_PORTS.start}


def interactive_port(target: InstrumentTarget, port: int) -> str | None:
    """``"ssh"``, ``"rdp"`` or ``"vnc"`` when ``port`` is an interactive port of
    ``target`` (a forward to it is refused), else None."""
    if port == target.ssh_port or port == SSH_PORT:
        return "ssh"
    if port == RDP_PORT:
        return "rdp"
    if port in VNC_PORTS:
        return "vnc"
    kind = "ssh" if target.protocol == "sftp" else target.protocol
    well_known = _WELL_KNOWN.get(kind)
    if well_known is None or not target.ports or well_known in target.ports:
        return None
    if kind == "ssh":  # the port the gateway probes for the host key
        return kind if port == target.ports[0] else None
    # a desktop instrument whose desktop port is not the standard one: nothing says
    # which listed port it is, so none of them is forwarded (fail closed)
    return kind if port in target.ports else None


# what an interactive server says first, before the client sends anything it needs
_BANNERS = ((b"SSH-", "ssh"), (b"RFB ", "vnc"))


def interactive_banner(first: bytes) -> str | None:
    """``"ssh"``/``"vnc"`` when a forwarded port's first bytes are an SSH or VNC server's
    greeting: an sshd on a port the inventory does not mark is cut off all the same."""
    for prefix, kind in _BANNERS:
        if first.startswith(prefix):
            return kind
    return None


def forward_refusal(target: InstrumentTarget, port: int, kind: str, login: str) -> str:
    """What the engineer reads when a forward to an interactive port is refused."""
    if kind == "ssh":
        return (
            f"port {port} of {target.name} is its SSH port: forwards to it are not "
            f"recorded, so they are refused; connect with ssh {login}+{target.name}@<broker>"
            " (sftp/scp the same way, where the grant allows file transfer)"
        )
    if kind in ("vnc", "rdp"):
        return (
            f"port {port} of {target.name} is its {kind.upper()} desktop port: forwards to it "
            "are not recorded, so they are refused; open the desktop, recorded, in the hoshu "
            f"console: /console/desktop/{target.name}?port={port}"
        )
    return (
        f"port {port} of {target.name} is its {kind.upper()} desktop port: forwards to it "
        "are not recorded, so they are refused; desktop access will come through the "
        "hoshu console, recorded"
    )


# --- exec commands ---------------------------------------------------------------
# program name -> the argument that puts it in file-transfer mode (None: any use)
_TRANSFER: dict[str, tuple[str, ...] | None] = {
    "sftp-server": None,
    "internal-sftp": None,
    "gesftpserver": None,
    "sftp": None,
    "scp": ("-t", "-f"),
    "rsync": ("--server", "--daemon"),
    "rz": None,
    "sz": None,
    "rb": None,
    "sb": None,
    "rx": None,
    "sx": None,
    "lrz": None,
    "lsz": None,
}
_SERVERS = {"sftp-server", "internal-sftp", "gesftpserver", "scp", "rsync"}
_SHELLS = {"sh", "bash", "dash", "ash", "zsh", "ksh", "mksh", "busybox", "su"}
# wrapper -> options of it that take a value (the next word)
_WRAPPERS: dict[str, frozenset[str]] = {
    "exec": frozenset({"-a"}),
    "command": frozenset(),
    "builtin": frozenset(),
    "nohup": frozenset(),
    "time": frozenset({"-f", "-o"}),
    "setsid": frozenset(),
    "nice": frozenset({"-n", "--adjustment"}),
    "ionice": frozenset({"-c", "-n", "-p"}),
    "env": frozenset({"-u", "--unset", "-C", "--chdir", "-S", "--split-string"}),
    "sudo": frozenset(
        {
            "-u",
            "-g",
            "-C",
            "-D",
            "-h",
            "-p",
            "-r",
            "-t",
            "-U",
            "-T",
            "--user",
            "--group",
            "--chdir",
            "--host",
            "--prompt",
        }
    ),
    "doas": frozenset({"-u", "-C"}),
    "stdbuf": frozenset({"-i", "-o", "-e"}),
    "timeout": frozenset({"-k", "-s", "--kill-after", "--signal"}),
    "chroot": frozenset(),
    "xargs": frozenset({"-I", "-n", "-d", "-a", "-E", "-L", "-P", "-s"}),
    "unbuffer": frozenset(),
    "script": frozenset({"-c", "-O", "-I", "-T"}),
    # shell words that start a command list: what follows them is a command
    **{w: frozenset() for w in ("{", "!", "if", "then", "else", "elif", "do", "while", "until")},
}
_TAKES_ONE_POSITIONAL = {"timeout": 1, "chroot": 1}  # timeout DURATION, chroot DIR
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
_OPERATORS = set(";&|()<>\n")
_UNRESOLVED = ("$", "`")
_MAX_DEPTH = 8


@dataclass(frozen=True, slots=True)
class Transfer:
    """Why a command is taken for file transfer: the program, or that it cannot be told."""

    program: str
    unresolved: bool = False


def transfer_program(command: str) -> Transfer | None:
    """The file-transfer program ``command`` would run, or None when it runs none.

    Fails closed: a command that does not parse, or whose program is only known
    at run time, comes back as an unresolved :class:`Transfer`.
    """
    try:
        return _scan(command, 0)
    except ValueError:
        return Transfer(command[:64], unresolved=True)


def _scan(command: str, depth: int) -> Transfer | None:
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deep")
    for words in _simple_commands(command):
        found = _check(words, depth)
        if found is not None:
            return found
    return None


def _simple_commands(command: str) -> list[list[str]]:
    # a newline ends a command as ``;`` does (inside quotes the change is harmless here)
    text = command.replace("\r", " ").replace("\n", ";")
    lex = shlex.shlex(text, posix=True, punctuation_chars=";&|()<>")
    lex.whitespace_split = True
    lex.commenters = ""
    out: list[list[str]] = [[]]
    redirect = False
    for tok in lex:  # raises ValueError on an unbalanced quote
        if tok and set(tok) <= _OPERATORS:
            redirect = tok[-1] in "<>"
            if not redirect:
                out.append([])
            continue
        if redirect:  # the file name of a redirection is not a command word
            redirect = False
            continue
        out[-1].append(tok)
    return [w for w in out if w]


def _name(word: str) -> str:
    return word.rsplit("/", 1)[-1].removesuffix(".exe")


def _check(words: list[str], depth: int) -> Transfer | None:
    words = _strip(words)
    if not words:
        return None
    prog = words[0]
    if any(c in prog for c in _UNRESOLVED):
        return Transfer(prog, unresolved=True)
    name = _name(prog)
    if any(c in name for c in "*?["):
        hits = [n for n in _TRANSFER if fnmatch.fnmatchcase(n, name)]
        return Transfer(hits[0]) if hits else None
    if name in _SHELLS or name == "eval":
        inner = _inner_command(name, words[1:])
        return _scan(inner, depth + 1) if inner is not None else None
    if name in _TRANSFER:
        marks = _TRANSFER[name]
        if marks is None or any(_has_flag(w, m) for w in words[1:] for m in marks):
            return Transfer(name)
    # an SFTP server or a server-mode scp/rsync anywhere as a word (``find -exec``,
    # a wrapper not listed here) is refused as well
    for i, w in enumerate(words[1:], 1):
        n = _name(w)
        if n in _SERVERS and (
            _TRANSFER[n] is None
            or any(_has_flag(x, m) for x in words[i + 1 :] for m in _TRANSFER[n] or ())
        ):
            return Transfer(n)
    return None


def _has_flag(word: str, flag: str) -> bool:
    if word == flag:
        return True
    # short flags cluster: scp -prt, -vf
    return (
        len(flag) == 2
        and word.startswith("-")
        and not word.startswith("--")
        and flag[1] in word[1:]
    )


def _strip(words: list[str]) -> list[str]:
    """Drop leading assignments and wrappers (with their options) down to the program."""
    i = 0
    while i < len(words):
        w = words[i]
        if _ASSIGNMENT.match(w):
            i += 1
            continue
        name = _name(w)
        if name not in _WRAPPERS:
            break
        takes = _WRAPPERS[name]
        i += 1
        while i < len(words) and words[i].startswith("-") and words[i] != "-":
            opt = words[i]
            i += 1
            if opt == "--":
                break
            if opt in takes or (opt[:2] in takes and len(opt) == 2):
                i += 1
        while i < len(words) and name == "env" and _ASSIGNMENT.match(words[i]):
            i += 1
        i += min(_TAKES_ONE_POSITIONAL.get(name, 0), max(0, len(words) - i - 1))
    return words[i:]


def _inner_command(shell: str, args: list[str]) -> str | None:
    """The command string a shell runs: ``sh -c STR``, ``bash -lc STR``, ``eval A B``."""
    if shell == "eval":
        return " ".join(args)
    if shell == "busybox":  # busybox sh -c ..., busybox APPLET ...
        return shlex.join(args) if args else None
    if shell == "su":  # su [-] [user] -c STR
        for i, a in enumerate(args[:-1]):
            if a in ("-c", "--command"):
                return args[i + 1]
        return None
    for i, a in enumerate(args):
        if a.startswith("-") and not a.startswith("--") and "c" in a[1:]:
            return args[i + 1] if i + 1 < len(args) else None
        if not a.startswith("-"):
            return None  # ``sh script``: runs a file the broker cannot see
    return None
