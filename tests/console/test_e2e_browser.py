"""The console's "done when", end to end: ``./run demo`` as a person runs it, a real mail
server, stock ``ssh`` and headless Debian Chromium.

The demo (``python -m hoshu_demo``: ``hoshu serve``, the hospital gateway, the simulated
laboratory) runs with its approvers' mail going to a real SMTP server (aiosmtpd) on
loopback.  What it prints is read as a person reads it: the console URL answers and a
printed user signs in with the printed password and a TOTP code.  Then:

* the engineer asks for access (the ``hoshu`` CLI); the approver receives the
  notification mail, opens its link in the browser, signs in with TOTP by keyboard
  alone (Tab, Enter) and approves;
* the engineer connects with stock ``ssh``; the approver watches the session live in
  the browser, sees the output of the command the engineer typed appear on the page,
  and terminates it: the engineer's ``ssh`` ends;
* the auditor finds the session, plays its recording in the browser (the output
  appears in the player) and exports the search as CSV.

On every main page it passes axe-core (no serious or critical finding) and takes a
screenshot in Japanese and English into docs/images/console/ (the names docs/console.md
shows).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from tests.console.conftest import focused, screenshot, serious_violations, tab_to, wait_for
from tests.support import free_port, poll_sync
from tests.support.demoflow import Totp
from tests.support.stockssh import engineer_ssh

pytestmark = [
    pytest.mark.slow,
    pytest.mark.xdist_group("console-e2e"),
    pytest.mark.timeout(600),
]

BIN = Path(sys.executable).parent
WAIT_S = 40.0  # a busy two-core machine


@dataclass
class Mailbox:
    """What the SMTP server received: (envelope recipients, parsed message)."""

    mails: list[tuple[list[str], EmailMessage]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = message_from_bytes(envelope.content, policy=default_policy)
        assert isinstance(mail, EmailMessage)
        self.mails.append((list(envelope.rcpt_tos), mail))
        return "250 OK"


@dataclass
class Running:
    cwd: Path
    root: Path
    out: Path
    info: dict[str, Any]
    env: dict[str, str]
    mailbox: Mailbox
    codes: dict[str, Totp]

    def printed(self) -> str:
        return self.out.read_text(errors="replace")

    def hoshu(self, user: str, *args: str, stdin: str = "") -> Any:
        env = {
            **self.env,
            "HOSHU_API": self.info["broker"]["api_url"],
            "HOSHU_CONFIG_DIR": self.info["users"][user]["config_dir"],
        }
        r = subprocess.run(
            [str(BIN / "hoshu"), "--json", *args],
            input=stdin,
            text=True,
            capture_output=True,
            env=env,
            cwd=self.cwd,
            timeout=60,
            check=False,
        )
        assert r.returncode == 0, f"hoshu {args}: {r.stderr}"
        return json.loads(r.stdout) if r.stdout.strip()[:1] in "{[" else r.stdout


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    mailbox = Mailbox()
    smtp_port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    cwd = tmp_path_factory.mktemp("e2e")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOSHU_")}
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    demo_env = {
        **env,
        "HOSHU_SMTP_HOST": "127.0.0.1",
        "HOSHU_SMTP_PORT": str(smtp_port),
        "HOSHU_SMTP_SECURITY": "none",
    }
    out_path = cwd / "demo.out"
    out = open(out_path, "wb")
    argv = [sys.executable, "-m", "hoshu_demo", "--root", ".hoshu-demo", "--any-ports"]
    proc = subprocess.Popen(argv, cwd=cwd, env=demo_env, stdout=out, stderr=subprocess.STDOUT)
    info_path = cwd / ".hoshu-demo" / "demo.json"

    def started() -> bool:
        assert proc.poll() is None, out_path.read_text()[-3000:]
        return info_path.exists() and b"Ctrl-C stops" in out_path.read_bytes()

    try:
        poll_sync(started, 300, "the demo to start", interval_s=0.2)
        info = json.loads(info_path.read_text())
        now = time.time()
        codes = {u: Totp(info["users"][u]["totp_secret"], now) for u in info["users"]}
        yield Running(cwd, cwd / ".hoshu-demo", out_path, info, env, mailbox, codes)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        out.close()
        controller.stop()


def page_shot(driver: webdriver.Chrome, name: str, findings: dict[str, list[str]]) -> None:
    """axe-core on the page as shown, then its screenshot ``name`` (…-ja / …-en)."""
    found = serious_violations(driver)
    if found:
        findings[name] = found
    screenshot(driver, name)


def switch(driver: webdriver.Chrome, lang: str) -> None:
    wait_for(driver, f"#lang-{lang}", WAIT_S).click()
    wait_for(driver, f"html[lang={lang}]", WAIT_S)


def sign_in(driver: webdriver.Chrome, name: str, password: str, code: str) -> None:
    """The sign-in form filled by mouse-free typing (the fields are clicked into)."""
    wait_for(driver, "#username", WAIT_S).send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "totp").send_keys(code)
    driver.find_element(By.ID, "signin").click()
    WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(
        lambda d: "/console/login" not in d.current_url
    )


def keyboard_sign_in(driver: webdriver.Chrome, name: str, password: str, code: str) -> None:
    """Sign in with the keyboard alone: Tab to each field, type, Enter submits."""
    wait_for(driver, "#username", WAIT_S)
    tab_to(driver, "username")
    driver.switch_to.active_element.send_keys(name)
    driver.switch_to.active_element.send_keys(Keys.TAB)
    assert focused(driver) == "password"
    driver.switch_to.active_element.send_keys(password)
    tab_to(driver, "totp")
    driver.switch_to.active_element.send_keys(code + Keys.ENTER)
    WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(
        lambda d: "/console/login" not in d.current_url
    )


def _downloaded(folder: Path) -> Path | None:
    done = [p for p in folder.glob("hoshu-audit*.csv") if not p.name.endswith(".crdownload")]
    return done[0] if done else None


def test_the_printed_console_url_answers_and_a_printed_user_signs_in(demo: Running) -> None:
    """What ``./run demo`` prints: the console URL and each user's sign-in (role, name,
    password); the URL answers with the sign-in page and the admin signs in with it."""
    printed = demo.printed()
    m = re.search(r"Web console \(Japanese or English\): (http://\S+)", printed)
    assert m, printed[-2000:]
    url = m.group(1)
    lines = {
        role: re.search(rf"^\s+{role}\s+(\S+)\s+password (\S+)", printed, re.M)
        for role in ("hospital approver", "hospital auditor", "vendor engineer", "platform admin")
    }
    assert all(lines.values()), printed[-2000:]
    assert lines["hospital approver"].group(1) == "sato"  # type: ignore[union-attr]
    assert lines["hospital auditor"].group(1) == "suzuki"  # type: ignore[union-attr]
    assert lines["vendor engineer"].group(1) == "tanaka"  # type: ignore[union-attr]
    name, password = lines["platform admin"].groups()  # type: ignore[union-attr]
    with httpx.Client(timeout=10, follow_redirects=True) as http:
        page = http.get(url)
        assert page.status_code == 200 and 'id="signin"' in page.text
        base = url.split("/console/")[0]
        r = http.post(
            f"{base}/console/login",
            data={"username": name, "password": password, "totp": demo.codes[name].code()},
            headers={"Origin": base},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text[:500]
        assert "/console/login" not in r.headers["location"]
        home = http.get(base + r.headers["location"])
        assert home.status_code == 200 and "/console/login" not in str(home.url)
        # a wrong password from the printout's neighbour is refused
        bad = http.post(
            f"{base}/console/login",
            data={"username": name, "password": password + "x", "totp": "000000"},
            headers={"Origin": base},
            follow_redirects=False,
        )
        assert bad.status_code != 303 or "/console/login" in bad.headers.get("location", "")


def test_approve_from_the_mail_watch_terminate_and_play_back_in_the_browser(
    demo: Running, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    d, b = demo, browser
    users = d.info["users"]
    findings: dict[str, list[str]] = {}
    cobas = d.info["instruments"]["cobas-c503-1"]
    console = d.info["broker"]["api_url"]

    # the engineer asks for access
    d.hoshu(
        "tanaka",
        "login",
        "--user",
        "tanaka",
        "--password-stdin",
        "--totp",
        d.codes["tanaka"].code(),
        stdin=users["tanaka"]["password"],
    )
    req = d.hoshu(
        "tanaka",
        "request",
        "cobas-c503-1",
        "--port",
        str(cobas["ssh_port"]),
        "--duration",
        "1h",
        "--reason",
        "ALT calibration drift",
        "--ticket",
        "INC-1042",
        "--plan",
        "check QC log, recalibrate ALT",
    )
    rid = str(req["id"])

    # the approver's mail arrives, with the console link
    mail = poll_sync(
        lambda: next((m for to, m in d.mailbox.mails if "sato@hoshi-hospital.example" in to), None),
        WAIT_S,
        "the approver's notification mail",
        interval_s=0.1,
    )
    assert mail is not None
    body = mail.get_body(preferencelist=("plain",))
    assert body is not None
    text = body.get_content()
    assert "ALT calibration drift" not in text  # no reason in the mail
    [link] = {u for u in re.findall(r"https?://\S+", text) if u.endswith("/console/inbox")}
    assert link == f"{console}/console/inbox"

    # the approver opens the link: the sign-in page first, by keyboard alone
    b.delete_all_cookies()
    b.get(link)
    wait_for(b, "#signin", WAIT_S)
    assert "/console/login" in b.current_url
    page_shot(b, "login-ja", findings)
    switch(b, "en")
    page_shot(b, "login-en", findings)
    switch(b, "ja")
    keyboard_sign_in(b, "sato", users["sato"]["password"], d.codes["sato"].code())
    b.get(link)
    card = wait_for(b, f"#request-{rid}", WAIT_S)
    assert "INC-1042" in card.text and "cobas-c503-1" in card.text
    page_shot(b, "inbox-ja", findings)
    switch(b, "en")
    page_shot(b, "inbox-en", findings)
    # approve by keyboard: Tab to the comment, type, Tab to Approve, Enter
    comment = wait_for(b, f"#request-{rid}", WAIT_S).find_element(By.TAG_NAME, "textarea")
    comment_id = comment.get_attribute("id") or ""
    assert comment_id, "the comment field has an id (its label points at it)"
    tab_to(b, comment_id, limit=80)
    b.switch_to.active_element.send_keys("OK, lab staff present")
    b.switch_to.active_element.send_keys(Keys.TAB)
    approve = b.switch_to.active_element
    assert "approve" in (approve.get_attribute("class") or ""), approve.get_attribute("outerHTML")
    approve.send_keys(Keys.ENTER)
    wait_for(b, "#notice", WAIT_S)
    b.get(f"{console}/console/grants")
    wait_for(b, "main", WAIT_S)
    assert "cobas-c503-1" in b.find_element(By.TAG_NAME, "main").text
    page_shot(b, "grants-en", findings)
    switch(b, "ja")
    page_shot(b, "grants-ja", findings)
    b.get(f"{console}/console/gateway")
    wait_for(b, "main", WAIT_S)
    assert "hoshi-lab-gw1" in b.find_element(By.TAG_NAME, "main").text
    page_shot(b, "gateway-ja", findings)
    switch(b, "en")
    page_shot(b, "gateway-en", findings)

    # the engineer connects with stock ssh and a terminal
    argv, env = engineer_ssh(
        d.root,
        {**d.env, "HOSHU_CONFIG_DIR": users["tanaka"]["config_dir"]},
        d.codes["tanaka"].code(),
        d.info["broker"]["ssh_port"],
        "tanaka+cobas-c503-1",
        "true",
    )
    argv = [*argv[:-2], "-tt", argv[-2]]  # an interactive shell on a terminal, not a command
    terminal = tmp_path / "engineer-terminal.txt"
    with terminal.open("wb") as out:
        ssh = subprocess.Popen(
            argv, env=env, stdout=out, stderr=out, stdin=subprocess.PIPE, start_new_session=True
        )
    assert ssh.stdin is not None
    try:

        def listed() -> bool:
            assert ssh.poll() is None, terminal.read_text(errors="replace")[-1000:]
            b.get(f"{console}/console/sessions")
            wait_for(b, "main", WAIT_S)
            return bool(b.find_elements(By.CSS_SELECTOR, "tr[data-session]"))

        poll_sync(listed, WAIT_S, "the engineer's session on the approver's page", interval_s=0.5)
        row = b.find_element(By.CSS_SELECTOR, "tr[data-session]")
        assert "cobas-c503-1" in row.text
        sid = row.get_attribute("data-session") or ""
        page_shot(b, "sessions-en", findings)
        switch(b, "ja")
        page_shot(b, "sessions-ja", findings)
        wait_for(b, f"tr[data-session='{sid}'] a.watch", WAIT_S).click()
        wait_for(b, "#term-state[data-state='live']", WAIT_S)
        ssh.stdin.write(b'echo "seen-live-$((6*7))"\n')
        ssh.stdin.flush()
        poll_sync(
            lambda: "seen-live-42" in b.find_element(By.ID, "term").text,
            WAIT_S,
            "the engineer's command output on the approver's page",
            interval_s=0.2,
        )
        page_shot(b, "watch-ja", findings)
        switch(b, "en")
        wait_for(b, "#term-state[data-state='live']", WAIT_S)
        ssh.stdin.write(b"echo done-$((1+2))\n")
        ssh.stdin.flush()
        poll_sync(
            lambda: "done-3" in b.find_element(By.ID, "term").text,
            WAIT_S,
            "the second command's output on the English page",
            interval_s=0.2,
        )
        page_shot(b, "watch-en", findings)
        b.find_element(By.ID, "terminate").click()
        notice = wait_for(b, "#notice", WAIT_S)
        assert "terminated" in notice.text
        rc = poll_sync(lambda: ssh.poll(), WAIT_S, "the engineer's ssh to end", interval_s=0.1)
        assert rc is not None
    finally:
        if ssh.poll() is None:
            ssh.kill()
            ssh.wait(10)
    assert "seen-live-42" in terminal.read_text(errors="replace")

    # the auditor: search, play, export
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    b.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    b.delete_all_cookies()
    b.get(f"{console}/console/login")
    sign_in(b, "suzuki", users["suzuki"]["password"], d.codes["suzuki"].code())
    search = f"{console}/console/audit?engineer=tanaka&type=session.ended"

    def found() -> bool:
        b.get(search)
        wait_for(b, "#filters", WAIT_S)
        return bool(b.find_elements(By.CSS_SELECTOR, "tr[data-type='session.ended']"))

    poll_sync(found, 60, "the session's end in the auditor's search", interval_s=1.0)
    row = b.find_element(By.CSS_SELECTOR, "tr[data-type='session.ended']")
    assert sid in row.text
    wait_for(b, "html[lang=ja]", WAIT_S)  # the browser's language: a fresh sign-in
    page_shot(b, "audit-search-ja", findings)
    switch(b, "en")
    page_shot(b, "audit-search-en", findings)
    b.get(search)  # the language link keeps the page, not its query: the search again
    wait_for(b, "tr[data-type='session.ended']", WAIT_S)
    assert len(b.find_elements(By.CSS_SELECTOR, "#events tbody tr")) == 1
    b.find_element(By.ID, "export-csv").click()
    path = poll_sync(lambda: _downloaded(downloads), WAIT_S, "the CSV download")
    assert path is not None
    table = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
    assert [(r["EventType"], r["TargetSessionId"]) for r in table] == [("session.ended", sid)]

    wait_for(b, f"a.session[href$='/{sid}']", WAIT_S).click()
    check = wait_for(b, "#sha-check", WAIT_S)
    assert check.get_attribute("data-check") == "match"

    def player_text() -> str:
        got = b.find_elements(By.CSS_SELECTOR, "#player .ap-term-text")
        return str(got[0].text) if got else ""

    for lang in ("en", "ja"):  # the player page in English, then switched to Japanese
        if lang == "ja":
            switch(b, "ja")
        wait_for(b, "#player .ap-play-button", WAIT_S).click()
        poll_sync(lambda: "seen-live-42" in player_text(), WAIT_S, "the output in the player")
        wait_for(b, "#player-state[data-state='ended']", WAIT_S)
        page_shot(b, f"audit-player-{lang}", findings)
    b.get(f"{console}/console/audit/verify")
    for lang in ("ja", "en"):
        if lang == "en":
            switch(b, "en")
        wait_for(b, "#verify", WAIT_S).click()
        result = wait_for(b, "#verify-result", WAIT_S)
        assert result.get_attribute("data-ok") == "true", result.text  # the chain holds
        page_shot(b, f"audit-verify-{lang}", findings)

    def checked(*pages: str) -> None:
        for page in pages:
            b.get(console + page)
            wait_for(b, "main h1", WAIT_S)
            assert "/console/login" not in b.current_url, page
            found_here = serious_violations(b)
            if found_here:
                findings[page] = found_here

    # axe-core on the other pages of each role (their screenshots are other tests')
    checked(
        "/console/account",
        "/console/account/password",
        "/console/recordings",
        "/console/audit/review",
        "/console/audit/compliance",
    )
    for user, pages in (
        (
            "tanaka",
            (
                "/console/my/instruments",
                "/console/my/request",
                "/console/my/requests",
                "/console/my/keys",
            ),
        ),
        (
            "admin",
            tuple(
                f"/console/admin/{p}"
                for p in ("orgs", "people", "contracts", "policies", "gateways", "instruments")
            ),
        ),
    ):
        b.delete_all_cookies()
        b.get(f"{console}/console/login")
        sign_in(b, user, users[user]["password"], d.codes[user].code())
        checked(*pages)

    assert findings == {}, json.dumps(findings, indent=1, ensure_ascii=False)
