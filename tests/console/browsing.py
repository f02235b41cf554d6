"""Console pages in a real browser: the seeded approvers' sign-ins and the page moves
the console tests (and the desktop ones) share."""

from __future__ import annotations

from datetime import timedelta

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from broker.access import totp
from broker.access.people import NewUser
from broker.access.ports import Actor
from broker.access.services import Services
from tests.console.conftest import wait_for
from tests.control.conftest import PASSWORD, actor_for
from tests.frontdoor.harness import World


class People:
    """Console sign-ins for the seeded approvers (TOTP enrolled here, each code used once)."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.s: Services = w.policy.s
        self.secrets: dict[str, str] = {}

    def actor(self, name: str) -> Actor:
        return self.w.policy.actors[name]  # type: ignore[no-any-return]

    def add_approver(self, name: str, org: str) -> None:
        user = self.s.people.create_user(
            self.actor("root"), NewUser(name, f"Person {name}", org, ["approver"], PASSWORD)
        )
        self.w.policy.actors[name] = actor_for(self.s, user)

    def code(self, name: str) -> str:
        if name not in self.secrets:
            actor = self.actor(name)
            uri = self.s.auth.totp_begin(actor)
            secret = uri.split("secret=")[1].split("&")[0]
            self.s.auth.totp_confirm(
                actor, totp.code_at(secret, self.w.clock() - timedelta(seconds=30))
            )
            self.secrets[name] = secret
        code = totp.code_at(self.secrets[name], self.w.clock())
        return code


def browser_sign_in(driver: webdriver.Chrome, url: str, name: str, code: str) -> None:
    driver.delete_all_cookies()
    driver.get(f"{url}/console/login")
    wait_for(driver, "#username").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "totp").send_keys(code)
    driver.find_element(By.ID, "signin").click()
    WebDriverWait(driver, 10, poll_frequency=0.05).until(
        lambda d: not d.current_url.endswith("/console/login")
    )


def switch(driver: webdriver.Chrome, lang: str) -> None:
    """Press the language link; wait for the page in ``lang``."""
    wait_for(driver, f"#lang-{lang}").click()
    wait_for(driver, f"html[lang={lang}]")
