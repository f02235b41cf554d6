"""The console's rules at the HTTP level (no browser): catalogs, headers, cookies,
CSRF and Origin, escaping, expiry and lockout messages, refusals and their events.

One seeded broker app per module, called through Starlette's TestClient.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from broker.access.model import GrantStatus
from broker.console.i18n import LANGS, catalog, negotiate
from broker.console.web import CSP
from tests.console.conftest import (
    CSRF,
    Console,
    client,
    csrf_of,
    signed_in,
    site,
    visible_text,
)
from tests.control.conftest import PASSWORD

TEMPLATES = resources.files("broker.console").joinpath("templates")


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with site(tmp_path_factory.mktemp("console-http")) as console:
        yield console


def test_catalogs_have_the_same_keys_and_every_used_key() -> None:
    """Both languages hold the same keys, and every key a template names exists."""
    keys = {lang: set(catalog(lang)) for lang in LANGS}
    assert keys["ja"] == keys["en"]
    used: set[str] = set()
    for tpl in TEMPLATES.iterdir():
        used |= set(re.findall(r"""t\(["']([a-z_]+\.[a-z_]+)["']""", tpl.read_text()))
    assert used and used <= keys["ja"], used - keys["ja"]
    for lang in LANGS:
        assert all(v.strip() for v in catalog(lang).values())
        # the Japanese catalog is Japanese, not English copied over
    differ = [k for k in keys["ja"] if catalog("ja")[k] != catalog("en")[k]]
    assert len(differ) > len(keys["ja"]) * 0.9


def test_language_from_cookie_then_browser_then_japanese() -> None:
    assert negotiate(None, None) == "ja"
    assert negotiate(None, "en-US,en;q=0.9") == "en"
    assert negotiate(None, "fr-FR, en;q=0.3, ja;q=0.8") == "ja"
    assert negotiate(None, "fr, de") == "ja"
    assert negotiate("en", "ja") == "en"
    assert negotiate("xx", "en") == "en"


def test_no_page_shows_a_raw_key_or_inline_script(c: Console) -> None:
    """Every page in both languages: its text holds no catalog key, it has no inline
    script, and it carries the strict headers (CSP, no framing, no-store)."""
    c.request(["cobas-1"], "raw key probe", ticket="INC-1")
    keys = set(catalog("ja"))
    for lang in LANGS:
        anonymous = client(c, lang)
        pages = [anonymous.get("/console/login"), anonymous.get("/console/login?m=token_expired")]
        http = signed_in(c, "appr", lang)
        pages += [
            http.get("/console/inbox"),
            http.get("/console/grants"),
            http.get("/console/inbox?done=approved"),
            http.post("/console/requests/nope/approve", data={}),
        ]
        for r in pages:
            assert r.headers["content-type"].startswith("text/html")
            assert r.headers["content-security-policy"] == CSP
            assert "frame-ancestors 'none'" in CSP and "script-src 'self'" in CSP
            assert r.headers["cache-control"] == "no-store"
            assert r.headers["x-content-type-options"] == "nosniff"
            assert "<script" not in r.text and " on" + "click=" not in r.text
            text = visible_text(r.text)
            assert not [k for k in keys if k in text], r.url
            assert f'<html lang="{lang}">' in r.text


def test_session_cookie_is_httponly_strict_and_secure_behind_https(tmp_path: Path) -> None:
    """Plain HTTP on loopback: ``hoshu_session`` without Secure; with an HTTPS public
    URL: ``__Host-hoshu_session``, Secure, HttpOnly, SameSite=Strict, Path=/."""
    for url, name, secure in (
        ("", "hoshu_session", False),
        ("https://broker.example.jp", "__Host-hoshu_session", True),
    ):
        with site(tmp_path / name, public_api_url=url) as s:
            r = client(s).post(
                "/console/login",
                data={"username": "appr", "password": PASSWORD, "totp": s.code("appr")},
                follow_redirects=False,
            )
            assert r.status_code == 303
            cookie = r.headers["set-cookie"]
            assert cookie.startswith(f"{name}=hoshu_")
            attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
            assert {"httponly", "path", "max-age"} <= attrs and "domain" not in attrs
            assert "samesite=strict" in cookie.lower()
            assert ("secure" in attrs) is secure
            if secure:  # behind an HTTPS ingress the browser's Origin is the public URL
                http = client(s)
                http.cookies.set(name, cookie.split(";")[0].split("=", 1)[1])
                page = http.get("/console/inbox")
                token = CSRF.search(page.text)
                assert token
                r = http.post(
                    "/console/logout",
                    data={"csrf": token.group(1)},
                    headers={"Origin": url},
                    follow_redirects=False,
                )
                assert r.status_code == 303


def test_free_text_is_escaped(c: Console) -> None:
    req = c.request(
        ["cobas-1"],
        '<script>alert("x")</script>',
        ticket="<img src=x>",
        work_plan="<b onmouseover=alert(1)>plan</b>",
    )
    page = signed_in(c, "appr").get("/console/inbox").text
    card = page[page.index(f'id="request-{req.id}"') :]
    assert "<script>alert" not in page and "<img src=x>" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in card
    assert "&lt;b onmouseover=alert(1)&gt;plan&lt;/b&gt;" in card


def test_foreign_origin_is_refused_and_changes_nothing(c: Console) -> None:
    req = c.request(["cobas-1"], "origin probe")
    http = signed_in(c, "appr")
    token = csrf_of(http)
    c.emitter.clear()
    r = http.post(
        f"/console/requests/{req.id}/approve",
        data={"csrf": token, "comment": "x"},
        headers={"Origin": "https://evil.example"},
    )
    assert r.status_code == 403 and 'data-key="error.csrf"' in r.text
    [refused] = c.emitter.of_type("request.refused")
    assert refused.record["EventResultDetails"] == "csrf_failed"
    assert c.services.requests.show(c.world.admin, req.id).request.status == "pending"
    # the same form from the console's own origin goes through
    r = http.post(
        f"/console/requests/{req.id}/approve",
        data={"csrf": token, "comment": "ok"},
        headers={"Origin": "http://testserver"},
    )
    assert r.status_code == 200 and 'id="notice"' in r.text
    assert c.services.requests.show(c.world.admin, req.id).request.status == "approved"


def test_another_hospitals_approver_is_refused(c: Console) -> None:
    req = c.request(["cobas-1"], "not for tsuki")
    http = signed_in(c, "other-appr")
    assert req.id not in http.get("/console/inbox").text
    c.emitter.clear()
    r = http.post(f"/console/requests/{req.id}/approve", data={"csrf": csrf_of(http)})
    assert r.status_code == 403 and 'data-key="error.forbidden"' in r.text
    [refused] = c.emitter.of_type("request.refused")
    assert refused.record["ActorUsername"] == "other-appr"
    assert refused.record["RequestId"] == req.id
    assert c.services.requests.show(c.world.admin, req.id).request.status == "pending"


def test_oversized_comment_is_refused_and_changes_nothing(c: Console) -> None:
    req = c.request(["cobas-1"], "long comment probe")
    http = signed_in(c, "appr")
    r = http.post(
        f"/console/requests/{req.id}/approve", data={"csrf": csrf_of(http), "comment": "x" * 2001}
    )
    assert r.status_code == 422 and 'data-key="error.invalid"' in r.text
    r = http.post(
        f"/console/requests/{req.id}/approve", data={"csrf": csrf_of(http), "comment": "x" * 5000}
    )
    assert r.status_code == 422
    assert c.services.requests.show(c.world.admin, req.id).request.status == "pending"


def test_revoke_a_grant(c: Console) -> None:
    req = c.request(["cobas-1"], "to be revoked")
    view = c.services.requests.approve(c.world.actors["appr2"], req.id)
    assert view.grant is not None
    http = signed_in(c, "appr")
    page = http.get("/console/grants")
    assert f'data-grant="{view.grant.id}"' in page.text
    c.emitter.clear()
    r = http.post(
        f"/console/grants/{view.grant.id}/revoke",
        data={"csrf": csrf_of(http, "/console/grants"), "comment": "作業中止"},
    )
    assert r.status_code == 200 and 'id="notice"' in r.text
    [g] = [g for g in c.services.grants.list_grants(c.world.admin) if g.id == view.grant.id]
    assert g.status == GrantStatus.REVOKED
    [revoked] = c.emitter.of_type("grant.revoked")
    assert revoked.record["ActorUsername"] == "appr"
    assert revoked.record["Details"]["comment"] == "作業中止"


def test_sign_out_ends_the_session(c: Console) -> None:
    http = signed_in(c, "appr")
    cookie = http.cookies.get("hoshu_session")
    assert cookie
    r = http.post("/console/logout", data={"csrf": csrf_of(http)})
    assert r.status_code == 200 and "サインアウトしました" in r.text
    replay = client(c)
    replay.cookies.set("hoshu_session", cookie)
    r = replay.get("/console/inbox", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/console/login")


def test_expired_session_says_so(c: Console) -> None:
    http = signed_in(c, "appr")
    c.clock.advance(c.services.ctx.config.access_token_ttl_s + 1)
    r = http.get("/console/inbox")
    assert r.url.path == "/console/login"
    assert "セッションの有効期限が切れました" in r.text


def test_lockout_message(c: Console) -> None:
    http = client(c, "en")
    c.code("hadmin")  # enrolled, so the password is the part that is wrong
    for _ in range(c.services.ctx.config.lockout_failures):
        r = http.post(
            "/console/login", data={"username": "hadmin", "password": "wrong", "totp": "000000"}
        )
        assert r.status_code == 401
    r = http.post(
        "/console/login",
        data={"username": "hadmin", "password": PASSWORD, "totp": c.code("hadmin")},
    )
    assert r.status_code == 401 and 'data-key="login.locked_for"' in r.text
    assert "locked for up to 15 minutes" in visible_text(r.text)
    assert len(c.emitter.of_type("user.locked_out")) == 1


def test_language_link_sets_a_cookie_and_stays_on_the_console(c: Console) -> None:
    http = client(c)
    r = http.get("/console/lang/en?next=/console/login", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login"
    assert "hoshu_lang=en" in r.headers["set-cookie"]
    assert "Sign in" in http.get("/console/login").text
    # the link brings back the same page with its query (a desktop's ?port=, filters)
    page = http.get("/console/login?m=signed_out_ok").text
    assert 'href="/console/lang/ja?next=/console/login%3Fm%3Dsigned_out_ok"' in page
    r = http.get("/console/lang/ja?next=/console/login%3Fm%3Dsigned_out_ok", follow_redirects=False)
    assert r.headers["location"] == "/console/login?m=signed_out_ok"
    long = "/console/login?m=" + "x" * 600  # too long to carry: the path alone
    assert 'href="/console/lang/en?next=/console/login"' in http.get(long).text
    for evil in ("//evil.example/", "https://evil.example/", "/console/\\\\evil", "/v1/me"):
        r = http.get("/console/lang/ja", params={"next": evil}, follow_redirects=False)
        assert r.headers["location"] == "/console/"


def test_static_files_are_only_the_console_s_own(c: Console) -> None:
    http = client(c)
    r = http.get("/console/static/console.css")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/css")
    assert "url(" not in r.text and "@import" not in r.text  # nothing fetched elsewhere
    for bad in ("../web.py", "..%2Fweb.py", "nope.js"):
        assert http.get(f"/console/static/{bad}").status_code == 404


def test_an_area_catalog_may_not_redefine_a_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Area catalogs merge into the language's; a key defined twice is refused at load."""
    import json

    from broker.console import i18n

    folder = tmp_path / "messages"
    folder.mkdir()
    (folder / "en.json").write_text(json.dumps({"a.title": "A"}), encoding="utf-8")
    (folder / "area.en.json").write_text(json.dumps({"b.title": "B"}), encoding="utf-8")

    class Files:
        def joinpath(self, name: str) -> Path:
            return tmp_path / name

    monkeypatch.setattr(resources, "files", lambda _pkg: Files())  # what i18n reads through
    i18n.catalog.cache_clear()
    try:
        assert i18n.catalog("en") == {"a.title": "A", "b.title": "B"}
        (folder / "more.en.json").write_text(json.dumps({"a.title": "again"}), encoding="utf-8")
        i18n.catalog.cache_clear()
        with pytest.raises(ValueError, match=r"a\.title"):
            i18n.catalog("en")
    finally:
        i18n.catalog.cache_clear()
