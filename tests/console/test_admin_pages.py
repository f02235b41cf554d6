"""The administrators' console pages over HTTP: each form does what the API route does
(the same service, the same admin.change event), and every forgotten path is refused
with the refusal event and no change: an engineer or approver posting an admin form,
a hospital admin touching another hospital's people, policy, gateways or instruments,
HTML in free text, oversized fields.

One seeded broker app per module (tests/console/conftest.py), through TestClient.
Admin changes need a fresh TOTP step-up in the console: every POST here carries a
fresh code in ``stepup_totp`` (ignored while the session's step-up is fresh).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from broker.access.model import User
from tests.console.conftest import Console, csrf_of, signed_in, site, visible_text
from tests.control.conftest import PASSWORD

PAGES = ("orgs", "people", "contracts", "policies", "gateways", "instruments")
STRONG = "a-long-enough-passphrase-42"


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    with site(tmp_path_factory.mktemp("console-admin")) as console:
        platform = console.services.people.org_of(console.world.admin.org_id)
        assert platform is not None
        console.world.add_user("padmin", platform, ["platform_admin"])
        yield console


def post(c: Console, http: TestClient, who: str, path: str, **fields: str) -> httpx.Response:
    """A console form as ``who`` with a fresh step-up code (each code used once)."""
    data = {
        "csrf": csrf_of(http, "/console/my/requests" if who.startswith("eng") else page_of(who))
    }
    data.update(stepup_totp=c.code(who), **fields)
    c.clock.advance(30)
    response: httpx.Response = http.post(path, data=data)
    return response


def page_of(who: str) -> str:
    return "/console/inbox" if "appr" in who else "/console/admin/people"


def user(c: Console, name: str) -> User | None:
    with c.services.ctx.uow() as tx:
        return tx.one(User, name=name)


def test_admin_pages_and_forms_refuse_engineers_and_approvers(c: Console) -> None:
    """Every admin page is 403 with admin.refused for an engineer and an approver; an
    admin form they post (with a valid session and CSRF token) changes nothing."""
    for who in ("eng", "appr"):
        http = signed_in(c, who)
        c.emitter.clear()
        for name in PAGES:
            r = http.get(f"/console/admin/{name}")
            assert r.status_code == 403 and 'data-key="error.forbidden"' in r.text, (who, name)
        assert len(c.emitter.of_type("admin.refused")) == len(PAGES)
        r = post(
            c,
            http,
            who,
            "/console/admin/people",
            name=f"sneak-{who}",
            full_name="Sneaky Person",
            org="hoshi-hospital",
            role_hospital_admin="on",
            password=STRONG,
        )
        assert r.status_code == 403
        assert user(c, f"sneak-{who}") is None
        r = post(c, http, who, "/console/admin/orgs", name=f"org-{who}", kind="vendor")
        assert r.status_code == 403
        assert all(o.name != f"org-{who}" for o in c.services.people.list_orgs(c.world.admin))
        refused = c.emitter.of_type("admin.refused")
        assert {e.record["ActorUsername"] for e in refused} == {who}


def test_platform_admin_sets_up_a_hospital_through_the_console(c: Console) -> None:
    """Organisation, person, contract, policy and instrument: each form is the API's
    change, with its admin.change event, and shows on its page."""
    http = signed_in(c, "padmin", "en")
    c.emitter.clear()
    r = post(c, http, "padmin", "/console/admin/orgs", name="kaze-hospital", kind="hospital")
    assert r.status_code == 200 and "has been created" in r.text and "kaze-hospital" in r.text
    r = post(
        c,
        http,
        "padmin",
        "/console/admin/people",
        name="kaze-admin",
        full_name="Kaze Admin",
        org="kaze-hospital",
        role_hospital_admin="on",
        role_approver="on",
        password=STRONG,
        email="admin@kaze.example",
    )
    assert r.status_code == 200 and "Kaze Admin" in r.text
    made = user(c, "kaze-admin")
    assert made is not None and sorted(made.roles) == ["approver", "hospital_admin"]
    r = post(
        c,
        http,
        "padmin",
        "/console/admin/instruments",
        name="kaze-cobas",
        hospital="kaze-hospital",
        host="10.9.0.5",
        ports="8080, 443",
        department="<i>chemistry</i>",
        criticality="high",
    )
    assert r.status_code == 200 and 'data-instrument="kaze-cobas"' in r.text
    assert "&lt;i&gt;chemistry&lt;/i&gt;" in r.text and "<i>chemistry" not in r.text
    r = post(
        c,
        http,
        "padmin",
        "/console/admin/contracts",
        vendor="acme-labs",
        hospital="kaze-hospital",
        instruments="kaze-cobas",
        reference="<b>K-2026</b>",
    )
    assert r.status_code == 200 and "&lt;b&gt;K-2026&lt;/b&gt;" in r.text
    [contract] = [
        x for x in c.services.estate.list_contracts(c.world.admin) if x.reference == "<b>K-2026</b>"
    ]
    r = post(
        c,
        http,
        "padmin",
        "/console/admin/policies/kaze-hospital",
        max_duration_min="120",
        approvals_required="2",
        critical_approvals_required="2",
        hours_start="08:00",
        hours_end="18:00",
        timezone="Asia/Tokyo",
        emergency_max_duration_min="60",
        request_ttl_h="48",
        emergency_allowed="on",
        clipboard_allowed="on",
        drive_allowed="on",
    )
    assert r.status_code == 200 and "policy has been saved" in r.text
    policy = c.services.estate.show_policy(c.world.admin, "kaze-hospital")
    assert (policy.max_duration_s, policy.approvals_required, policy.hours_start) == (
        7200,
        2,
        "08:00",
    )
    assert policy.emergency_allowed and not policy.file_transfer_allowed
    assert policy.clipboard_allowed and policy.drive_allowed and not policy.record_input
    assert policy.request_ttl_s == 48 * 3600
    r = post(c, http, "padmin", f"/console/admin/contracts/{contract.id}/end")
    assert r.status_code == 200 and "contract has ended" in r.text
    changes = [
        (e.record["Operation"], e.record["ObjectType"]) for e in c.emitter.of_type("admin.change")
    ]
    for expected in (
        ("create", "org"),
        ("create", "user"),
        ("create", "instrument"),
        ("create", "contract"),
        ("update", "policy"),
    ):
        assert expected in changes, (expected, changes)


def test_a_hospital_admin_manages_only_their_own_hospital(c: Console) -> None:
    """hadmin (hoshi-hospital) is refused, with the refusal event and no change, for
    tsuki-hospital's people, policy, gateways and instruments, and for vendor engineers."""
    http = signed_in(c, "hadmin", "en")
    people = http.get("/console/admin/people").text
    assert 'data-user="appr"' in people and 'data-user="other-appr"' not in people
    before = user(c, "other-appr")
    assert before is not None
    c.emitter.clear()
    attempts = [
        ("/console/admin/people/other-appr/expire", {"expires": "2026-03-03T10:00"}),
        ("/console/admin/people/other-appr/reset-totp", {}),
        ("/console/admin/people/other-appr/deactivate", {}),
        (
            "/console/admin/people",
            {
                "name": "tsuki-new",
                "full_name": "Tsuki New",
                "org": "tsuki-hospital",
                "role_approver": "on",
                "password": STRONG,
            },
        ),
        (
            "/console/admin/people",
            {
                "name": "vendor-new",
                "full_name": "Vendor New",
                "org": "acme-labs",
                "role_engineer": "on",
                "password": STRONG,
            },
        ),
        ("/console/admin/orgs", {"name": "hadmin-org", "kind": "vendor"}),
        (
            "/console/admin/policies/tsuki-hospital",
            {
                "max_duration_min": "600",
                "approvals_required": "1",
                "critical_approvals_required": "1",
                "emergency_max_duration_min": "60",
                "request_ttl_h": "24",
                "emergency_allowed": "on",
            },
        ),
        ("/console/admin/gateways/token", {"hospital": "tsuki-hospital", "ttl_min": "60"}),
        (
            "/console/admin/instruments",
            {"name": "sneaky-1", "hospital": "tsuki-hospital", "host": "10.1.0.99"},
        ),
    ]
    for path, fields in attempts:
        r = post(c, http, "hadmin", path, **fields)
        assert r.status_code in (403, 404), (path, r.status_code)
        assert 'id="error"' in r.text
    after = user(c, "other-appr")
    assert after is not None
    assert (after.expires_at, after.active, after.totp_enrolled) == (
        before.expires_at,
        before.active,
        before.totp_enrolled,
    )
    assert user(c, "tsuki-new") is None and user(c, "vendor-new") is None
    assert not c.services.estate.show_policy(c.world.admin, "tsuki-hospital").emergency_allowed
    names = {i.name for i in c.services.estate.list_instruments(c.world.admin)}
    assert "sneaky-1" not in names
    assert not c.emitter.of_type("admin.change") and not c.emitter.of_type("gateway.token_issued")
    refused = c.emitter.of_type("admin.refused")
    assert len(refused) >= 6 and {e.record["ActorUsername"] for e in refused} == {"hadmin"}


def test_a_hospital_admin_expires_recertifies_and_resets_their_people(c: Console) -> None:
    http = signed_in(c, "hadmin", "en")
    c.code("appr2")  # appr2 has TOTP enrolled
    c.emitter.clear()
    r = post(c, http, "hadmin", "/console/admin/people/appr2/expire", expires="2026-04-01T18:00")
    assert r.status_code == 200 and "expiry has been saved" in r.text
    appr2 = user(c, "appr2")
    assert appr2 is not None and appr2.expires_at is not None
    assert appr2.expires_at.isoformat().startswith("2026-04-01T09:00")  # 18:00 in Tokyo
    r = post(
        c, http, "hadmin", "/console/admin/people/aud/recertify", comment="<b>still needed</b>"
    )
    assert r.status_code == 200 and "recertified" in r.text
    aud = user(c, "aud")
    assert aud is not None and aud.recertified_at is not None
    r = post(c, http, "hadmin", "/console/admin/people/appr2/reset-totp")
    assert r.status_code == 200
    appr2 = user(c, "appr2")
    assert appr2 is not None and not appr2.totp_enrolled
    ops = {e.record["Operation"] for e in c.emitter.of_type("admin.change")}
    assert {"expire", "recertify", "reset_totp"} <= ops
    row = http.get("/console/admin/people").text.split('data-user="appr2"', 1)[1].split("</tr>")[0]
    assert "TOTP not enrolled yet" in visible_text(row)
    del c.secrets["appr2"]  # appr2 enrols again at the next sign-in


def test_an_enrolment_token_is_shown_once(c: Console) -> None:
    http = signed_in(c, "hadmin", "en")
    c.emitter.clear()
    r = post(
        c, http, "hadmin", "/console/admin/gateways/token", hospital="hoshi-hospital", ttl_min="30"
    )
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "no-store"
    m = re.search(r'<pre id="enrolment-token">([^<]+)</pre>', r.text)
    assert m and m.group(1).startswith("hoshu-enroll-v1.")
    [issued] = c.emitter.of_type("gateway.token_issued")
    assert issued.record["ActorUsername"] == "hadmin"
    again = http.get("/console/admin/gateways").text
    assert m.group(1) not in again and 'id="enrolment-token"' not in again


def test_html_in_names_is_escaped_and_oversized_fields_are_refused(c: Console) -> None:
    http = signed_in(c, "hadmin", "en")
    r = post(
        c,
        http,
        "hadmin",
        "/console/admin/people",
        name="html-name",
        full_name='<script>alert("n")</script>',
        org="hoshi-hospital",
        role_auditor="on",
        password=STRONG,
    )
    assert r.status_code == 200
    assert "<script>alert" not in r.text and "&lt;script&gt;alert(&#34;n&#34;)" in r.text
    c.emitter.clear()
    for path, fields in (
        (
            "/console/admin/people",
            {
                "name": "too-long",
                "full_name": "x" * 201,
                "org": "hoshi-hospital",
                "role_auditor": "on",
                "password": STRONG,
            },
        ),
        ("/console/admin/people/aud/recertify", {"comment": "x" * 2001}),
        ("/console/admin/instruments", {"name": "long-1", "host": "h" * 254}),
    ):
        r = post(c, http, "hadmin", path, **fields)
        assert r.status_code == 422 and 'data-key="error.invalid"' in r.text, path
    assert user(c, "too-long") is None
    assert "long-1" not in {i.name for i in c.services.estate.list_instruments(c.world.admin)}
    refused = c.emitter.of_type("admin.refused")
    assert len(refused) == 3
    assert {e.record["EventResultDetails"] for e in refused} == {"field_too_long"}
    assert not c.emitter.of_type("admin.change")


def test_admins_see_the_admin_navigation_and_engineers_do_not(c: Console) -> None:
    page = signed_in(c, "hadmin").get("/console/admin/people").text
    nav = page.split("<nav", 1)[1].split("</nav>", 1)[0]
    assert "/console/admin/people" in nav and "/console/inbox" not in nav
    assert 'id="admin-nav"' in page
    eng = signed_in(c, "eng").get("/console/my/requests").text
    assert "/console/admin" not in eng
    assert PASSWORD  # the seeded people sign in with the world's password


def test_an_instruments_keyboard_layout_is_chosen_on_its_form_and_an_unknown_one_refused(
    c: Console,
) -> None:
    """The instrument form offers the keyboard layouts hoshu types on (en-US chosen);
    the one chosen is stored, one it does not know is refused and nothing is made."""
    http = signed_in(c, "hadmin", "ja")
    page = http.get("/console/admin/instruments")
    assert page.status_code == 200 and "キーボード配列 (RDP)" in page.text
    options = re.findall(
        r'<option value="([^"]+)"( selected)?>', page.text.split('id="i-keyboard"')[1]
    )
    assert options[:2] == [("en-US", " selected"), ("ja-JP", "")]
    fields = {"hospital": "hoshi-hospital", "host": "10.0.0.9", "ports": "3389", "protocol": "rdp"}
    r = post(
        c,
        http,
        "hadmin",
        "/console/admin/instruments",
        name="an-pc-2",
        keyboard_layout="ja-JP",
        **fields,
    )
    assert r.status_code == 200 and 'data-instrument="an-pc-2"' in r.text
    r = post(
        c,
        http,
        "hadmin",
        "/console/admin/instruments",
        name="an-pc-3",
        keyboard_layout="xx-XX",
        **fields,
    )
    assert r.status_code == 422 and "keyboard_layout must be one of en-US, ja-JP" in r.text
    made = {i.name: i.keyboard_layout for i in c.services.estate.list_instruments(c.world.admin)}
    assert made.get("an-pc-2") == "ja-JP" and "an-pc-3" not in made
