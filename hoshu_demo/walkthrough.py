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

    return f"""
hoshu demo is running. Broker API {b["api_url"]}, SSH front door 127.0.0.1:{b["ssh_port"]},
gateway '{info["gateway"]}' connected for hospital '{info["hospital"]}'.
Simulated laboratory: {", ".join(info["instruments"])}.  Details: {rel}/demo.json

In another terminal, from this directory:

  {env}

1. The engineer (vendor {info["vendor"]}) asks for access:
  {login("tanaka")}
  {as_("tanaka")} hoshu request cobas-c503-1 --port {cobas["ssh_port"]} --duration 1h \\
      --reason "ALT calibration drift" --ticket INC-1042 --plan "check QC log, recalibrate ALT"

2. The hospital approver approves it:
  {login("sato")}
  {as_("sato")} hoshu requests
  {as_("sato")} hoshu approve <request id> --comment "OK, lab staff present"

3. The engineer connects with stock OpenSSH (key + TOTP; the session is recorded):
  ssh -i {rel}/engineer/id_ed25519 -o UserKnownHostsFile={rel}/known_hosts \\
      -p {b["ssh_port"]} tanaka+cobas-c503-1@127.0.0.1
  (try: cat qc/2026-11-qc.csv; tail logs/analyzer.log)

4. The approver watches and can end it:
  {as_("sato")} hoshu sessions
  {as_("sato")} hoshu sessions watch <session id>
  {as_("sato")} hoshu sessions terminate <session id>

5. The auditor checks the trail and plays the recording:
  {login("suzuki")}
  {as_("suzuki")} hoshu audit search --engineer tanaka
  {as_("suzuki")} hoshu audit play <session id>
  hoshu audit verify --log {rel}/broker/audit/audit.log \\
      --key {rel}/auditor/audit_signing_key.pub --allow-open-tail
  (the broker's audit public key was copied out of its data directory at set-up; the log
   is live, so its newest events are signed at the next checkpoint, within a minute)

Ctrl-C stops everything.
"""
