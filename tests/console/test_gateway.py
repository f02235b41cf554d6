"""The console's gateway page against a real gateway agent holding a real tunnel.

The hospital's approver sees its own gateways only: one connected through a real
outbound tunnel (window-only mode, inside an approved window) with its mode,
connection time and version; one that is enrolled but not connected, with its
last report; a revoked one.  Another hospital's gateway is not listed, and an
engineer is refused (403 page and ``admin.refused``).  Screenshots (ja, en) go
into docs/images/console/.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from selenium import webdriver
from selenium.webdriver.common.by import By

from broker.console.gateway import RegistryTunnelStates
from broker.store.directory import StoreGatewayDirectory
from tests.console.conftest import screenshot, serving, sign_in, site, wait_for
from tests.control.conftest import PASSWORD, openssh_public_key
from tests.gateway.harness import lab
from wire import GatewayRecord, InventoryItem


async def test_gateway_page_shows_our_gateways_and_their_tunnels(
    tmp_path: Path, browser: webdriver.Chrome
) -> None:
    (tmp_path / "gw").mkdir()
    with site(tmp_path / "broker") as c:
        s, w = c.services, c.world
        hadmin = w.actors["hadmin"]

        def enrol(hospital: str, key: str, name: str) -> str:
            token = s.gateways.issue_token(w.admin, hospital).token
            return s.gateways.enroll(token, key, name, "1.4.0").gateway_id

        async with lab(tmp_path / "gw", mode="window-only") as L:
            key = L.gateway_key.export_public_key().decode()
            live = enrol(w.hospital.name, key, "kensa-gw1")
            L.directory.keys = {key: GatewayRecord(live, w.hospital.id, "kensa-gw1")}
            now = datetime.now(UTC)
            L.directory.windows = [(now - timedelta(minutes=1), now + timedelta(hours=1))]
            spare = enrol(w.hospital.name, openssh_public_key(), "kensa-gw2")
            StoreGatewayDirectory(s).record_inventory(
                spare,
                [InventoryItem("cobas-1", "10.0.0.5", (22,), "ssh", "chemistry", "c503", True, "")],
            )
            gone = enrol(w.hospital.name, openssh_public_key(), "old-gw")
            s.gateways.revoke(hadmin, gone)
            foreign = enrol(w.other_hospital.name, openssh_public_key(), "tsuki-gw1")
            c.app.state.gateway_tunnels = RegistryTunnelStates(L.listener.registry)
            await L.start_agent()
            await L.listener.registry.wait_for(live, 10)

            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=c.app), base_url="http://127.0.0.1"
            ) as http:

                async def page(name: str) -> httpx.Response:
                    http.cookies.clear()
                    r = await http.post(
                        "/console/login",
                        data={"username": name, "password": PASSWORD, "totp": c.code(name)},
                    )
                    c.clock.advance(30)
                    assert r.status_code == 303, r.text
                    return await http.get("/console/gateway")

                r = await page("appr")
                assert r.status_code == 200
                text = r.text
                assert foreign not in text and "tsuki-gw1" not in text
                rows = {
                    gid: text.split(f'data-gateway="{gid}"')[1].split("</tr>")[0]
                    for gid in (live, spare, gone)
                }
                assert 'data-state="connected"' in rows[live] and "許可時間帯のみ接続" in rows[live]
                assert "test" in rows[live]  # the version the live gateway announced
                assert 'data-state="disconnected"' in rows[spare] and "JST" in rows[spare]
                assert 'data-state="revoked"' in rows[gone]
                c.emitter.clear()
                r = await page("eng")
                assert r.status_code == 403
                assert [
                    (e.record["ActorUsername"], e.record["Operation"])
                    for e in c.emitter.of_type("admin.refused")
                ] == [("eng", "console.gateway")]

            with serving(c.app) as url:
                c.url = url
                await asyncio.to_thread(sign_in, browser, c, "appr")
                await asyncio.to_thread(browser.get, f"{url}/console/gateway")
                await asyncio.to_thread(wait_for, browser, f"tr[data-gateway='{live}']")
                await asyncio.to_thread(screenshot, browser, "gateway-ja", docs=False)
                await asyncio.to_thread(lambda: browser.find_element(By.ID, "lang-en").click())
                await asyncio.to_thread(wait_for, browser, "html[lang=en]")
                row = await asyncio.to_thread(wait_for, browser, f"tr[data-gateway='{live}']")
                assert "Connected" in row.text and "Only during approved windows" in row.text
                await asyncio.to_thread(screenshot, browser, "gateway-en", docs=False)
                await asyncio.to_thread(lambda: browser.find_element(By.ID, "lang-ja").click())
