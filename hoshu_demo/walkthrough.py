"""What the demo prints: the engineer's TOTP QR code and the walkthrough."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyotp
import qrcode


def qr_text(info: dict[str, Any]) -> str:
    secret = info["users"]["tanaka"]["totp_secret"]
    uri = pyotp.TOTP(secret).provisioning_uri(name="tanaka", issuer_name="hoshu")
    qr = qrcode.QRCode(border=1)
    qr.add_data(uri)
    buf = io.StringIO()
    qr.print_ascii(out=buf, invert=True)
    return (
        "\nEngineer tanaka's authenticator (scan with any TOTP app):\n"
        f"{buf.getvalue()}secret: {secret}\n"
    )


def walkthrough(info: dict[str, Any], root: Path) -> str:
    b = info["broker"]
    users = info["users"]
    cobas = info["instruments"]["cobas-c503-1"]
    rel = root.relative_to(Path.cwd()) if root.is_relative_to(Path.cwd()) else root
    env = f"export PATH=$PWD/.venv/bin:$PATH HOSHU_API={b['api_url']}"

    def as_(user: str) -> str:
        return f"HOSHU_CONFIG_DIR={rel}/users/{user}"

    def login(user: str) -> str:
        return (
            f"{as_(user)} hoshu login --user {user}"
            f"    # password {users[user]['password']}, code: "
            f"python -m hoshu_demo code {user}"
        )

    console = b.get("console_url", f"{b['api_url']}/console/")
    roles = {
        "approver": "hospital approver",
        "auditor": "hospital auditor",
        "engineer": "vendor engineer",
        "platform_admin": "platform admin",
    }
    signins = "\n".join(
        f"  {roles.get(u['role'], u['role']):<18} {name:<8} password {u['password']:<27}"
        f" code: python -m hoshu_demo code {name}"
        for name, u in users.items()
    )
    return f"""
hoshu demo is running. Broker API {b["api_url"]}, SSH front door 127.0.0.1:{b["ssh_port"]},
gateway '{info["gateway"]}' connected for hospital '{info["hospital"]}'.
Simulated laboratory: {", ".join(info["instruments"])}.  Details: {rel}/demo.json

Web console (Japanese or English): {console}
Sign in with the user name, the password and the 6-digit code (TOTP; a person's app
gives it, here: python -m hoshu_demo code USER; each code signs in once):
{signins}

In another terminal, from this directory:

  {env}

1. The engineer (vendor {info["vendor"]}) asks for access (or in the console: Request access):
  {login("tanaka")}
  {as_("tanaka")} hoshu request cobas-c503-1 --port {cobas["ssh_port"]} --duration 1h \\
      --reason "ALT calibration drift" --ticket INC-1042 --plan "check QC log, recalibrate ALT"

2. The hospital approver approves it in the console: sign in as sato at {console}
   (the Approval inbox shows the request; write a comment, press Approve).

3. The engineer connects with stock OpenSSH (key + TOTP; the session is recorded):
  ssh -i {rel}/engineer/id_ed25519 -o UserKnownHostsFile={rel}/known_hosts \\
      -p {b["ssh_port"]} tanaka+cobas-c503-1@127.0.0.1
  (try: cat qc/2026-11-qc.csv; tail logs/analyzer.log)

4. The approver watches it live and can end it: in the console as sato, Live sessions,
   Watch (the engineer's terminal in the browser), Terminate the session.

5. The auditor checks the trail and plays the recording: sign in as suzuki at {console},
   Audit, Event search (engineer tanaka, type session.ended), open the session's recording and
   play it in the browser (the SHA-256 check is shown); Export CSV; Verify the chain.
   The same from the command line:
  {login("suzuki")}
  {as_("suzuki")} hoshu audit search --engineer tanaka
  {as_("suzuki")} hoshu audit play <session id>
  hoshu audit verify --log {rel}/broker/audit/audit.log \\
      --key {rel}/auditor/audit_signing_key.pub --allow-open-tail
  (the broker's audit public key was copied out of its data directory at set-up; the log
   is live, so its newest events are signed at the next checkpoint, within a minute)

{_desktop(info, as_)}Ctrl-C stops everything.
"""


_DESKTOP_KINDS = {
    "rfb": "the LIS workstation, a VNC server (Xvnc; stored VNC password)",
    "rdp": "the analyzer PC, an RDP server (xrdp, TLS; stored user and password)",
}


def _desktop(info: dict[str, Any], as_: Any) -> str:
    """Step 6, the desktop instruments (VNC and RDP), those the demo has."""
    notes = "".join(f"({note})\n\n" for note in info.get("notes", []))
    desks = {n: i for n, i in info["instruments"].items() if i.get("desktop_url")}
    if not desks:
        return notes
    kinds = "\n".join(
        f"     {n:<9} port {i['ports'][0]:<6} {_DESKTOP_KINDS.get(i['protocol'], 'a desktop')}"
        for n, i in desks.items()
    )
    if any(i["protocol"] == "rdp" for i in desks.values()):
        kinds += (
            "\n     (the broker pins the RDP server's TLS certificate the first time it sees it)"
        )
    first, i = next(iter(desks.items()))
    opens = "\n".join(f"  {d['desktop_url']}" for d in desks.values())
    return f"""6. Desktops: real desktop servers the broker logs in to with the stored credential:
{kinds}
   The engineer asks for one ({as_("tanaka")} hoshu request {first} \\
      --port {i["ports"][0]} --duration 1h --reason "screen check" --ticket INC-1043 \\
      --plan "check the worklist screen"), sato approves, and tanaka opens it in the
   console (signed in as tanaka):
{opens}
   (the session is recorded, sato can watch it live and end it, and suzuki can play it
   back and export it as a video)

{notes}"""
