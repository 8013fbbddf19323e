"""The alert console page in a real headless Chromium against the real stack.

Gateway, TWO workers and the console service run as subprocesses; readings go in over MQTT. A nurse of
ward A logs in through the page. The test checks what a nurse relies on:

* ward-A alerts held by both workers appear in the one page without a reload; ward B's never do;
* Acknowledge, Snooze and Add note go through the console and the worker and come back through the live
  stream ("acknowledged by <user>"; exactly one ``acknowledged`` event on Kafka ``alerts``, with that account);
  a press held down while the list re-renders keeps its button and acknowledges when released; a pointer
  press on a card that had just moved (the list re-sorted under it) sends nothing and says so on the card;
* the alarm: an unacknowledged high alert is an active high-priority alarm with Web Audio running and
  bursts repeating; "silence" pauses the sound with a countdown while the alert stays; acknowledging every
  high and medium alert ends the alarm;
* glucose in mmol/L when the account switches units (mg/dL ÷ 18.016, one decimal);
* the patient detail view (24 h charts, alert history with who acknowledged and the notes);
* the console going away shows "reconnecting…" and then the "live updates lost" banner, and the page
  recovers by itself when it is back;
* logout returns to the login form and the session's cookie then gets 401;
* privacy: nothing in localStorage/sessionStorage, no request to any other origin.

Then, each with a console of its own: the locked screen (a session left to its idle timeout keeps the ward's
alarm counts live and audible with nothing of a patient in the page) and a stalled event stream (its network
path silent without a reset, through :class:`StallingProxy`) reopened within the page's bound.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from alerts.models import AlertEvent
from console.models import AuditRecord
from ingest.contract import vitals_topic
from tests.integration.conftest import consume_all, free_port
from tests.integration.console_browser_stack import (
    ARTIFACTS,
    Browser,
    StallingProxy,
    chromium,
    http_json,
    script_errors,
    wait_until,
)
from tests.integration.test_console_service import pick_patients, shared, users_cli, wait_ready
from tests.integration.test_pipeline import MIN, offline_alerts, publish
from wearwatch.config import Settings

pytestmark = pytest.mark.stack

NURSE, NURSE_PASSWORD = "nurse-a", "correct horse battery staple 7"
ADMIN, ADMIN_PASSWORD = "admin-1", "a different long admin passphrase 3"
GLUCOSE = [120, 95, 70, 52]  # mg/dL every 5 min: an urgent low (high) and an urgent-low forecast (medium)
#: the page's alert cards, read in one go (the stream re-renders them at any time)
CARDS_JS = """return [...document.querySelectorAll('article.alert')].map((c) => ({
  id: c.dataset.alertId, kind: c.dataset.kind, patient: c.dataset.patient, ward: c.dataset.ward,
  state: c.dataset.state, priority: c.dataset.priority, alarming: c.classList.contains('alarming'),
  text: c.innerText}));"""


def body_attr(b: Browser, name: str) -> str:
    return str(b.execute_script("return document.body.dataset[arguments[0]] || ''", name))


def cards(b: Browser) -> list[dict[str, Any]]:
    return list(b.execute_script(CARDS_JS))


def card(b: Browser, alert_id: str) -> dict[str, Any] | None:
    return next((c for c in cards(b) if c["id"] == alert_id), None)


def text(b: Browser, css: str) -> str:
    """The text of the first element matching ``css`` ("" if none), read in one step."""
    return str(b.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", css))


def seconds_left(label: str) -> int:
    m = re.fullmatch(r"Silenced (\d+):(\d\d)", label)
    assert m, label
    return int(m.group(1)) * 60 + int(m.group(2))


def click(b: Browser, css: str) -> None:
    """A real click (a user gesture) on the element, retried if the live stream re-rendered it meanwhile."""
    from selenium.common.exceptions import (
        ElementClickInterceptedException,
        ElementNotInteractableException,
        NoSuchElementException,
        StaleElementReferenceException,
    )
    from selenium.webdriver.common.by import By

    errors: list[str] = []

    def attempt() -> bool:
        try:
            e = b.find_element(By.CSS_SELECTOR, css)
            b.execute_script("arguments[0].scrollIntoView({block: 'center'})", e)  # not under the sticky header
            refused = moved_presses(b)
            e.click()
            if moved_presses(b) == refused:
                return True
            # its card had just moved (the list re-sorted): the page sent nothing; a nurse presses again
            errors.append("refused: the card had just moved")
            time.sleep(MOVED_GUARD_S)
            return False
        except (StaleElementReferenceException, ElementNotInteractableException, ElementClickInterceptedException,
                NoSuchElementException) as exc:
            errors.append(f"{type(exc).__name__}: {exc.msg.splitlines()[0] if exc.msg else ''}")
            return False  # re-rendered or moving at that instant: find it again

    wait_until(f"a clickable {css}", attempt, timeout=10, describe=lambda: (errors[-3:], b.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((e) => [e.closest('section').id, e.offsetWidth,"
        " e.disabled])", css)))


#: a pointer press on a card that moved less than this long before is refused by the page (console.js)
MOVED_GUARD_S = 0.8


def moved_presses(b: Browser) -> int:
    """Pointer presses the page refused because their card had just moved."""
    return int(body_attr(b, "movedPresses") or 0)


def keyboard_press(b: Browser, css: str, key: str) -> bool:
    """Focus the element as the keyboard would and press ``key``; False if it was re-rendered meanwhile."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        e = b.find_element("css selector", css)
        b.execute_script("arguments[0].focus()", e)
        if not b.execute_script("return document.activeElement === arguments[0]", e):
            return False
        e.send_keys(key)
        return True
    except StaleElementReferenceException:
        return False


def held_press(b: Browser, alert_id: str) -> None:
    """Press the card's Acknowledge button, and while it is held down re-render the list (what the live stream
    does at any time): the render waits for the release, and the press acknowledges the alert. A render that
    replaced the button between the pointer going down and coming up would leave the browser no click to send."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains

    def down() -> Any:
        c = card(b, alert_id)
        assert c is not None and c["state"] != "acknowledged", c
        try:
            e = b.find_element("css selector", in_card(alert_id, "button[data-action=ack]"))
            b.execute_script("arguments[0].scrollIntoView({block: 'center'})", e)
            ActionChains(b).move_to_element(e).click_and_hold().perform()
        except StaleElementReferenceException:
            return None  # re-rendered before the pointer went down: find it again
        with contextlib.suppress(StaleElementReferenceException):  # (stale: the pointer went down on its successor)
            if b.execute_script("return document.activeElement === arguments[0]", e):
                return e
        # the list moved before the pointer reached the button: released away from any card, nothing is pressed
        ActionChains(b).move_to_element(b.find_element("id", "alarm-summary")).release().perform()
        return None

    for _ in range(10):
        settled(b, alert_id)
        button = wait_until(f"the pointer down on {alert_id}'s Acknowledge", down, timeout=20)
        held, refused = int(body_attr(b, "heldRenders") or 0), moved_presses(b)
        b.execute_script("window.dispatchEvent(new HashChangeEvent('hashchange'))")  # the page renders its route
        assert int(body_attr(b, "heldRenders") or 0) >= held + 1  # (the stream's own renders are held too)
        assert b.execute_script("return arguments[0].isConnected && document.activeElement === arguments[0]", button)
        ActionChains(b).release().perform()
        if moved_presses(b) == refused:
            break
        # the stream moved the card just before the pointer went down (the page refused the press): again
    else:
        raise AssertionError(f"every held press on {alert_id} was refused as moved")
    acknowledged(b, alert_id, "by the held press")


def acknowledged(b: Browser, alert_id: str, how: str) -> None:
    """Wait until the stream shows the alert acknowledged (the worker applied the press)."""
    wait_until(f"{alert_id} acknowledged {how}", lambda: (c := card(b, alert_id)) is not None
               and c["state"] == "acknowledged", timeout=30, describe=lambda: card(b, alert_id))


def settled(b: Browser, alert_id: str) -> None:
    """Wait until the alert's card has stayed in place longer than the page's guard (a press would count)."""
    wait_until(f"{alert_id}'s card in place", lambda: b.execute_script(
        "const c = document.querySelector(arguments[0]);"
        "return c && Date.now() - Number(c.dataset.placedMs) > arguments[1]",
        f'article.alert[data-alert-id="{alert_id}"]', (MOVED_GUARD_S + 0.1) * 1000), timeout=20)


def press_after_move(b: Browser, alert_id: str) -> None:
    """The list moves under the pointer (grouped by patient: a heading above every group pushes the cards
    down) and the pointer presses the card's Acknowledge at once: the page sends nothing and says why on the
    card; grouping undone and the card left in place, the same press acknowledges."""
    from selenium.webdriver.support.ui import Select

    before = moved_presses(b)
    outcome = b.execute_script("""
        const [id, ack] = arguments;
        const card = () => document.querySelector(`article.alert[data-alert-id="${CSS.escape(id)}"]`);
        const placed = Number(card().dataset.placedMs);
        const group = document.getElementById('f-group');
        group.value = 'patient';
        group.dispatchEvent(new Event('change'));  // renders: the cards move
        const moved = Number(card().dataset.placedMs) > placed;
        card().querySelector(ack).dispatchEvent(new MouseEvent('click', {bubbles: true, detail: 1}));
        return [moved, card().querySelector('.state-line.error')?.innerText || '',
                card().querySelector('[data-pending]') !== null];""", alert_id, "button[data-action=ack]")
    moved, said, pending = outcome
    assert moved, "grouping by patient did not move the card"
    assert moved_presses(b) == before + 1
    assert said.startswith("This card had just moved when you pressed it: nothing was sent."), said
    assert not pending  # nothing sent
    Select(b.find_element("id", "f-group")).select_by_value("")  # back to one list (a real change)
    settled(b, alert_id)
    assert (card(b, alert_id) or {}).get("state") != "acknowledged"
    click(b, in_card(alert_id, "button[data-action=ack]"))
    acknowledged(b, alert_id, "after the refused press")


def in_card(alert_id: str, css: str) -> str:
    return f'article.alert[data-alert-id="{alert_id}"] {css}'


@contextmanager
def screenshot_on_failure(b: Browser) -> Iterator[None]:
    try:
        yield
    except BaseException:
        b.save_screenshot(str(ARTIFACTS / "failure.png"))
        raise


def login(b: Browser, username: str, password: str) -> None:
    from selenium.webdriver.common.by import By

    for field, value in (("login-username", username), ("login-password", password)):
        b.find_element(By.ID, field).clear()
        b.find_element(By.ID, field).send_keys(value)
    click(b, "#login-submit")
    wait_until(f"the console after {username} logged in", lambda: body_attr(b, "view") == "alerts")


def cgm_rows(pid: str, start: int) -> list[dict[str, Any]]:
    return [{"patient_id": pid, "signal": "glucose", "value": g, "unit": "mg/dL", "ts": start + i * 5 * MIN}
            for i, g in enumerate(GLUCOSE)]


def open_alerts_offline(pid: str, rows: list[dict[str, Any]]) -> dict[str, str]:
    """alert_id -> kind of the alerts the same readings leave open (the detectors and lifecycle, offline)."""
    state: dict[str, tuple[str, str]] = {}
    for kind, alert_id, st, _cause in offline_alerts(pid, rows):
        state[alert_id] = (kind, st)
    return {a: k for a, (k, st) in state.items() if st != "resolved"}


def test_nurse_console_in_a_browser(settings: Settings, spawn: Any, run_id: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    ward_a = pick_patients(f"A{run_id}", settings.partitions)  # one per partition: both workers hold some
    ward_b = f"B{run_id}-0"
    enrollment = tmp_path / "enrollment.csv"
    enrollment.write_text("patient_id,ward,overrides_json\n" + "".join(f"{p},A,\n" for p in ward_a)
                          + f"{ward_b},B,\n")
    s = settings.model_copy(update={
        "enrollment_file": str(enrollment),
        "console_port": free_port(),
        "console_secret": f"browser-test-secret-{run_id}-0123456789abcdef",
    })
    base = f"http://127.0.0.1:{s.console_port}"

    gateway = spawn("gateway", s, "gateway", "--stats-every", "2")
    s2 = s.model_copy(update={"web_port": free_port()})
    workers = [spawn("worker-1", s, "worker"), spawn("worker-2", s2, "worker")]
    worker_ports = [s.web_port, s2.web_port]
    gateway.wait_log("gateway up")
    wait_until("both workers holding partitions", lambda: shared(workers), timeout=120)
    console = spawn("console", s, "console")
    wait_ready(base, console)
    users_cli(s, "add", NURSE, "--role", "nurse", "--ward", "A", "--password-stdin", password=NURSE_PASSWORD)
    # an admin sees every ward whatever its own
    users_cli(s, "add", ADMIN, "--role", "admin", "--ward", "A", "--password-stdin", password=ADMIN_PASSWORD)

    start = int(time.time() * 1000) - 20 * MIN
    rows = {pid: cgm_rows(pid, start) for pid in [*ward_a, ward_b]}
    expected: dict[str, dict[str, str]] = {pid: open_alerts_offline(pid, r) for pid, r in rows.items()}
    for pid in ward_a:
        assert sorted(expected[pid].values()) == ["glucose_urgent_low", "glucose_urgent_low_soon"]
    expected_a = {a: (pid, k) for pid in ward_a for a, k in expected[pid].items()}
    ward_b_ids = set(expected[ward_b])
    publish(s, [(vitals_topic("sim", f"{pid}-cgm"), orjson.dumps(r)) for pid, r in rows.items()])

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium(1280, 800) as b, screenshot_on_failure(b):
        b.get(f"{base}/")
        wait_until("the login form", lambda: b.find_element(By.ID, "login-form").is_displayed())
        assert body_attr(b, "view") == "login"

        # a wrong password is refused with a message, and nothing else happens
        b.find_element(By.ID, "login-username").send_keys(NURSE)
        b.find_element(By.ID, "login-password").send_keys("not the password")
        click(b, "#login-submit")
        wait_until("the bad-credentials message",
                   lambda: "Wrong username or password" in text(b, "#login-error"))
        assert body_attr(b, "view") == "login"

        login(b, NURSE, NURSE_PASSWORD)
        assert text(b, "#user").split("\n") == [NURSE, "nurse · ward A"]

        # ---- every open ward-A alert, from both workers, without a reload; never ward B
        def ward_a_shown() -> set[str] | None:
            shown = cards(b)
            leaked = [c for c in shown if c["ward"] != "A" or c["id"] in ward_b_ids or c["patient"] == ward_b]
            assert not leaked, f"another ward's alerts on a ward-A nurse's page: {leaked}"
            ids = {c["id"] for c in shown}
            return ids if ids == set(expected_a) else None

        wait_until("every ward-A alert on the page", ward_a_shown, timeout=120)
        assert body_attr(b, "conn") == "live"
        for c in cards(b):
            pid, kind = expected_a[c["id"]]
            assert (c["patient"], c["kind"], c["state"]) == (pid, kind, "open")
            assert c["priority"] == ("high" if kind == "glucose_urgent_low" else "medium")
        shown = cards(b)
        n_high = sum(1 for pid in ward_a for k in expected[pid].values() if k == "glucose_urgent_low")
        assert [c["priority"] for c in shown] == ["high"] * n_high + ["medium"] * (len(shown) - n_high)
        # the patients live on both workers: each worker's FHIR endpoint answers for its own partitions only
        # (on a loaded machine a worker can miss a heartbeat and the group rebalance again: wait for it to settle)
        def owners() -> dict[str, list[int]]:
            return {alert_id: [port for port in worker_ports if http_json(
                "GET", f"http://127.0.0.1:{port}/fhir/DetectedIssue/{alert_id}")[0] == 200] for alert_id in expected_a}

        wait_until("each ward-A alert on exactly one worker, both workers holding some", lambda: (
            (o := owners()) and all(len(h) == 1 for h in o.values())
            and {h[0] for h in o.values()} == set(worker_ports)), timeout=90, every=2.0, describe=owners)

        # grouped by patient, filtered to one patient, to device alerts only (there are none)
        from selenium.webdriver.support.ui import Select

        Select(b.find_element(By.ID, "f-group")).select_by_value("patient")
        titles = b.execute_script("return [...document.querySelectorAll('.group-title')].map((e) => e.innerText)")
        assert sorted(titles) == sorted(f"Patient {pid} · ward A" for pid in ward_a)
        Select(b.find_element(By.ID, "f-group")).select_by_value("")
        Select(b.find_element(By.ID, "f-patient")).select_by_value(ward_a[1])
        assert {c["patient"] for c in cards(b)} == {ward_a[1]} and len(cards(b)) == 2
        Select(b.find_element(By.ID, "f-patient")).select_by_value("")
        Select(b.find_element(By.ID, "f-audience")).select_by_value("device")
        assert not cards(b) and text(b, "#no-alerts") == "No open alerts match the filters."
        Select(b.find_element(By.ID, "f-audience")).select_by_value("")
        assert len(cards(b)) == len(expected_a)

        # ---- the alarm: a high alert unacknowledged = active high-priority alarm, sound running
        assert body_attr(b, "alarm") == "high"
        assert body_attr(b, "audio") == "on"
        assert body_attr(b, "audioContext") == "running"
        bursts = int(body_attr(b, "bursts"))
        assert bursts >= 1
        # the high-priority burst repeats (every 8 s) while nobody acknowledges
        wait_until("a second high-priority burst", lambda: int(body_attr(b, "bursts")) > bursts, timeout=15)
        assert text(b, "#alarm-summary .count.high") == f"{n_high} high"
        assert "alarming" in (b.find_element(By.CSS_SELECTOR, "article.alert.p-high").get_attribute("class") or "")
        b.save_screenshot(str(ARTIFACTS / "console-alerts.png"))
        assert b.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        age = text(b, "article.alert .age")
        wait_until("the age ticking", lambda: text(b, "article.alert .age") != age, timeout=5)
        b.set_window_size(820, 1180)  # a tablet held upright: one column, nothing cut off
        wait_until("the tablet layout", lambda: b.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth"))
        b.save_screenshot(str(ARTIFACTS / "console-alerts-tablet.png"))
        b.set_window_size(1280, 800)

        assert body_attr(b, "sounding") == "high"
        # ---- silence: sound paused with a countdown, the alert stays visible and flashing
        click(b, "#silence")
        wait_until("silenced", lambda: body_attr(b, "audio") == "silenced")
        silenced_bursts = int(body_attr(b, "bursts"))
        assert body_attr(b, "sounding") == "none"
        first = seconds_left(text(b, "#audio-state"))
        assert 100 <= first <= 120, first
        assert body_attr(b, "alarm") == "high"
        assert b.find_elements(By.CSS_SELECTOR, "article.alert.p-high.alarming")

        # ---- acknowledge the first high alert through its button
        target = shown[0]
        pid_1 = target["patient"]
        medium_1 = next(a for a, k in expected[pid_1].items() if k == "glucose_urgent_low_soon")
        click(b, in_card(target["id"], "button[data-action=ack]"))
        wait_until("acknowledged by the nurse", lambda: (c := card(b, target["id"])) is not None
                   and c["state"] == "acknowledged" and f"Acknowledged by {NURSE}" in c["text"])
        assert not b.find_elements(By.CSS_SELECTOR, in_card(target["id"], "button[data-action=ack]"))
        assert not b.find_elements(By.CSS_SELECTOR, in_card(target["id"], ".state-line.pending"))

        # ---- a note on it, and a snooze of the patient's medium alert, round-trip through the worker
        note = f"gave 15 g fast glucose, recheck in 15 min ({run_id})"
        click(b, in_card(target["id"], "button[data-action=note]"))
        b.find_element(By.CSS_SELECTOR, in_card(target["id"], "textarea[data-field=note-text]")).send_keys(note)
        click(b, in_card(target["id"], "button[data-action=note-submit]"))
        wait_until("the note on the alert", lambda: (c := card(b, target["id"])) is not None
                   and f"{NURSE} " in c["text"] and note in c["text"])
        # "sent — waiting for confirmation" ends when the stream shows the note
        wait_until("the note confirmed", lambda: not text(b, in_card(target["id"], ".state-line.pending")))
        # a kind that can be high priority snoozes 5 minutes at most; the others longer
        options = [o.get_attribute("value") for o in b.find_elements(
            By.CSS_SELECTOR, in_card(target["id"], "select[data-field=snooze-minutes] option"))]
        assert options == ["1", "2", "5"]
        Select(b.find_element(By.CSS_SELECTOR, in_card(medium_1, "select[data-field=snooze-minutes]"))
               ).select_by_value("15")
        click(b, in_card(medium_1, "button[data-action=snooze]"))
        snooze_sent = time.time() * 1000
        wait_until("the snooze on the alert", lambda: (c := card(b, medium_1)) is not None
                   and "Snoozed until" in c["text"] and f"by {NURSE}" in c["text"] and not c["alarming"])
        wait_until("the snooze confirmed", lambda: not text(b, in_card(medium_1, ".state-line.pending")))

        # the silence held: no burst since it began, and its countdown runs
        assert int(body_attr(b, "bursts")) == silenced_bursts
        wait_until("the silence countdown runs", lambda: seconds_left(text(b, "#audio-state")) < first)
        # resuming (what the end of the 2 minutes does) sounds the alarm again: high alerts still wait
        assert text(b, "#silence") == "Resume sound"
        click(b, "#silence")
        wait_until("sound on again", lambda: body_attr(b, "audio") == "on")
        wait_until("the high-priority burst again", lambda: int(body_attr(b, "bursts")) > silenced_bursts, timeout=5)

        # ---- units: the account switches to mmol/L; glucose values are re-shown (÷ 18.016, one decimal)
        value_css = in_card(target["id"], ".ex-value dd")
        assert text(b, value_css) == "52 mg/dL" and text(b, in_card(target["id"], ".ex-threshold dd")) == "55 mg/dL"
        assert "52 mg/dL" in text(b, in_card(target["id"], ".message"))
        click(b, '#filters button[data-units="mmol/L"]')
        # 52 / 18.016 = 2.886 -> 2.9; 55 / 18.016 = 3.053 -> 3.1
        wait_until("glucose in mmol/L", lambda: text(b, value_css) == "2.9 mmol/L")
        assert text(b, in_card(target["id"], ".ex-threshold dd")) == "3.1 mmol/L"
        # the message is the server's text, re-rendered in the account's units (a fresh snapshot)
        wait_until("the alert text in mmol/L", lambda: "2.9 mmol/L" in text(b, in_card(target["id"], ".message")))

        # ---- patient detail: 24 h charts in the account's units, alert history with its lifecycle
        click(b, in_card(target["id"], ".patient a"))
        wait_until("the patient view", lambda: body_attr(b, "view") == "patient")
        assert b.current_url.endswith(f"#/patient/{pid_1}")
        wait_until("the four glucose minutes", lambda: b.find_elements(
            By.CSS_SELECTOR, '.chart[data-signal="glucose"][data-points="4"]'), timeout=90)
        glucose_chart = text(b, '.chart[data-signal="glucose"]')
        assert "Glucose (mmol/L)" in glucose_chart and "2.9 mmol/L" in glucose_chart
        assert b.find_elements(By.CSS_SELECTOR, '.chart[data-signal="glucose"] svg path.mean')
        assert b.find_elements(By.CSS_SELECTOR, '.chart[data-signal="glucose"] svg g.marker')
        wait_until("the history with the acknowledgement and the note", lambda: (
            h := text(b, "#history")) and f"acknowledged by {NURSE}" in h and note in h, timeout=60)
        # the last hour, where these minutes are (the 24-h default squeezes them to the right edge)
        click(b, '.range-box button[data-hours="1"]')
        wait_until("the 1-hour charts", lambda: b.find_elements(
            By.CSS_SELECTOR, '.charts[data-hours="1"] .chart[data-signal="glucose"][data-points="4"]'))
        b.set_window_size(1280, 1900)  # the whole view: open alerts, the three charts, the history
        b.save_screenshot(str(ARTIFACTS / "patient-detail.png"))
        b.set_window_size(820, 1180)  # a tablet held upright
        wait_until("the tablet layout", lambda: b.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth"))
        b.save_screenshot(str(ARTIFACTS / "patient-detail-tablet.png"))
        b.set_window_size(1280, 800)
        click(b, "#back")
        wait_until("the alert list again", lambda: body_attr(b, "view") == "alerts")

        # ---- acknowledge every remaining high and medium alert: the alarm ends
        waiting = [c["id"] for c in cards(b) if c["state"] != "acknowledged"]
        # the first from the keyboard (focus + Enter: real buttons, no mouse needed), the rest by click
        from selenium.webdriver.common.keys import Keys

        first_ack = in_card(waiting[0], "button[data-action=ack]")
        wait_until("an acknowledgement from the keyboard", lambda: keyboard_press(b, first_ack, Keys.ENTER))
        assert len(waiting) >= 3, waiting
        held_press(b, waiting[1])
        press_after_move(b, waiting[2])
        for alert_id in dict.fromkeys(waiting[3:]):
            # the stream may have changed a card since the list was read (resolved, or its acknowledgement
            # shown): click only what still waits; the check below still wants every card acknowledged
            c = card(b, alert_id)
            if c is None or c["state"] == "acknowledged":
                continue
            click(b, in_card(alert_id, "button[data-action=ack]"))
        # the list re-sorts as acknowledgements come back: a card that moved between the pointer's aim and
        # its press was not the one pressed (a neighbour was): as a nurse would, press a card again when it
        # still waits 10 s later
        pressed = dict.fromkeys(waiting, time.monotonic())
        again: list[str] = []

        def all_acknowledged() -> bool:
            still = [c["id"] for c in cards(b) if c["state"] != "acknowledged"]
            for alert_id in still:
                if time.monotonic() - pressed.get(alert_id, 0.0) > 10:
                    again.append(alert_id)
                    pressed[alert_id] = time.monotonic()
                    with contextlib.suppress(AssertionError):
                        click(b, in_card(alert_id, "button[data-action=ack]"))
            return not still

        wait_until("every ward-A alert acknowledged", all_acknowledged, timeout=90,
                   describe=lambda: ([(c["id"], c["kind"], c["state"], c["text"][-300:]) for c in cards(b)
                                      if c["state"] != "acknowledged"], f"pressed again: {again}"))
        wait_until("no alarm", lambda: body_attr(b, "alarm") == "none")
        assert text(b, "#alarm-summary .count.high") == "0 high"
        assert body_attr(b, "audio") == "on"
        quiet = int(body_attr(b, "bursts"))
        time.sleep(9)  # longer than the high-priority repetition: no burst comes
        assert int(body_attr(b, "bursts")) == quiet and body_attr(b, "sounding") == "none"
        b.save_screenshot(str(ARTIFACTS / "console-acknowledged.png"))

        # ---- the console goes away: reconnecting, the "live updates lost" banner, after 30 s a technical
        # alarm (the screen may be stale); when it is back the page reconnects by itself, nothing reloaded
        console.stop()
        wait_until("reconnecting…", lambda: body_attr(b, "conn") in ("reconnecting", "lost"), timeout=15)
        wait_until("the lost banner", lambda: b.find_element(By.ID, "lost-banner").is_displayed(), timeout=20)
        assert body_attr(b, "conn") == "lost"
        b.save_screenshot(str(ARTIFACTS / "console-updates-lost.png"))
        wait_until("the technical alarm", lambda: body_attr(b, "technical") == "lost"
                   and body_attr(b, "sounding") == "technical", timeout=40)
        wait_until("its first burst", lambda: int(body_attr(b, "bursts")) > quiet, timeout=5)
        console = spawn("console", s, "console")
        wait_ready(base, console)
        wait_until("live again", lambda: body_attr(b, "conn") == "live", timeout=60)
        assert not b.find_element(By.ID, "lost-banner").is_displayed()
        assert (body_attr(b, "technical"), body_attr(b, "sounding"), body_attr(b, "alarm")) == ("none", "none", "none")
        # the restarted console rebuilt the same view: the same alerts, all acknowledged
        assert {(c["id"], c["state"]) for c in cards(b)} == {(a, "acknowledged") for a in expected_a}
        # the network goes away under the browser (the console keeps running): lost, then live again
        b.set_network_conditions(offline=True, latency=0, download_throughput=-1, upload_throughput=-1)
        wait_until("lost with the network down", lambda: b.find_element(By.ID, "lost-banner").is_displayed(),
                   timeout=30)
        b.set_network_conditions(offline=False, latency=0, download_throughput=-1, upload_throughput=-1)
        wait_until("live with the network back", lambda: body_attr(b, "conn") == "live", timeout=30)
        assert not b.find_element(By.ID, "lost-banner").is_displayed()

        # ---- privacy: nothing kept in the browser, no request anywhere but the console
        assert b.execute_script("return localStorage.length + sessionStorage.length") == 0
        origins = b.execute_script(
            "return performance.getEntriesByType('resource').map((e) => new URL(e.name).origin)")
        assert origins and set(origins) == {base}, origins
        assert ward_b not in b.page_source

        # ---- logout: back to the login form; the session's cookie is refused from then on
        session = b.get_cookie("ww_session")
        assert session and session.get("httpOnly") is True
        cookie = f"ww_session={session['value']}"
        assert http_json("GET", f"{base}/api/me", cookie=cookie)[0] == 200
        click(b, "#logout")
        wait_until("the login form after logout", lambda: body_attr(b, "view") == "login"
                   and b.find_element(By.ID, "login-form").is_displayed())
        assert not cards(b) and "#" not in b.current_url
        assert not b.find_element(By.ID, "logged-out-warning").is_displayed()  # she logged out herself
        assert http_json("GET", f"{base}/api/me", cookie=cookie)[0] == 401
        assert http_json("GET", f"{base}/api/alerts", cookie=cookie)[0] == 401
        assert b.execute_script(
            "return fetch('/api/alerts', {credentials: 'same-origin'}).then((r) => r.status)") == 401
        assert body_attr(b, "alarm") == "none"

        # ---- an admin: every ward, read only, no alarm sound; the audit trail of the nurse's session
        login(b, ADMIN, ADMIN_PASSWORD)
        assert text(b, "#user").split("\n") == [ADMIN, "admin · all wards, read only"]
        every = set(expected_a) | ward_b_ids
        # (other tests on this shared stack publish too: their patients land in ward "unassigned" of our topics)
        wait_until("every ward's alerts for the admin", lambda: every <= {c["id"] for c in cards(b)}, timeout=60)
        assert not b.find_elements(By.CSS_SELECTOR, "button[data-action]")
        assert "Read only" in text(b, f'article.alert[data-alert-id="{sorted(ward_b_ids)[0]}"] .act')
        assert body_attr(b, "alarm") == "high" and body_attr(b, "sounding") == "none"  # ward B waits, unheard here
        click(b, "#audit-link")
        wait_until("the audit view", lambda: body_attr(b, "view") == "audit"
                   and b.find_elements(By.CSS_SELECTOR, "#audit-table"))
        b.find_element(By.CSS_SELECTOR, '#audit-form input[name="user"]').send_keys(NURSE)
        click(b, '#audit-form button[type="submit"]')

        def nurse_actions() -> Counter[str] | None:
            rows = b.execute_script("return [...document.querySelectorAll('#audit-table tr.audit-row')]"
                                    ".map((r) => [r.dataset.action, r.children[1].innerText])")
            if not rows or any(who != NURSE for _a, who in rows):
                return None
            return Counter(a for a, _who in rows)

        actions = wait_until("the nurse's audit trail", nurse_actions, timeout=30)
        # one patient opened once: the detail's reloads (its alerts changed, the units) are not views of their own
        assert actions == Counter({"login_failed": 1, "login": 1, "ack": len(expected_a), "note": 1, "snooze": 1,
                                   "preferences": 1, "logout": 1, "patient_view": 1})
        b.save_screenshot(str(ARTIFACTS / "audit.png"))
        click(b, "#logout")
        wait_until("logged out", lambda: body_attr(b, "view") == "login")

        # ---- the browser's own policy: sound only after a gesture. The login click unlocks it; a reloaded
        # page (no gesture yet) says "blocked" with a prominent "Enable sound", whose click unlocks it
        with chromium(1280, 800, autoplay=False) as b2, screenshot_on_failure(b2):
            b2.get(f"{base}/")
            wait_until("the login form", lambda: b2.find_element(By.ID, "login-form").is_displayed())
            login(b2, NURSE, NURSE_PASSWORD)
            wait_until("sound on after the login click", lambda: body_attr(b2, "audio") == "on")
            assert body_attr(b2, "audioContext") == "running"
            b2.refresh()
            wait_until("the console again", lambda: body_attr(b2, "view") == "alerts")
            assert (body_attr(b2, "audio"), body_attr(b2, "audioContext")) == ("blocked", "suspended")
            assert b2.find_element(By.ID, "sound-banner").is_displayed() and text(b2, "#audio-state") == "Sound blocked"
            b2.save_screenshot(str(ARTIFACTS / "console-sound-blocked.png"))
            click(b2, "#enable-sound")
            wait_until("sound on after Enable sound", lambda: body_attr(b2, "audio") == "on")
            assert not b2.find_element(By.ID, "sound-banner").is_displayed()
            # an administrator disables the account while the page is open: the stream ends the session and
            # the screen says loudly that it watches nothing any more
            users_cli(s, "disable", NURSE)
            wait_until("the session ended by the server", lambda: body_attr(b2, "view") == "login", timeout=30)
            assert b2.find_element(By.ID, "logged-out-warning").is_displayed()
            assert text(b2, "#login-error") == "Your account has been disabled."
            assert not cards(b2) and body_attr(b2, "sounding") == "none"
            b2.save_screenshot(str(ARTIFACTS / "console-session-ended.png"))
            assert script_errors(b2) == []

        # ---- throttling: repeated wrong passwords get "try again in m:ss" and the button waits
        for _ in range(8):
            b.find_element(By.ID, "login-username").clear()
            b.find_element(By.ID, "login-username").send_keys(NURSE)
            b.find_element(By.ID, "login-password").send_keys("wrong again")
            click(b, "#login-submit")
            msg = wait_until("an answer", lambda: (m := text(b, "#login-error")) != "Logging in…" and m)
            if msg.startswith("Too many"):
                break
        assert re.fullmatch(r"Too many failed attempts\. Try again in \d+:\d\d\.", msg), msg
        assert not b.find_element(By.ID, "login-submit").is_enabled()
        assert script_errors(b) == []

    # ---- Kafka `alerts`: exactly one acknowledgement per alert, by the nurse's account; the snooze and note
    # (every gateway on this shared stack subscribes to every vendor's topics, and nurse apps of other tests
    # acknowledge their own patients over MQTT: keep our patients' events)
    ours = {*ward_a, ward_b}
    events = [e for r in consume_all(s, s.topic_alerts, idle_s=3.0) if (e := AlertEvent.from_json(r.value)).patient_id
              in ours]
    distinct = {e.event_id: e for e in events}.values()
    acked = [e for e in distinct if e.state == "acknowledged" and e.cause == "acknowledged"]
    twice = {a for a, n in Counter(e.alert_id for e in acked).items() if n > 1}
    if twice:  # say whether the console sent two commands or the worker emitted twice for one
        commands = [r.value for r in consume_all(s, s.topic_commands, idle_s=1.0)]
        raise AssertionError(("one alert acknowledged twice on Kafka", {
            a[-6:]: {"commands": [c.decode() for c in commands if a.encode() in c],
                     "events": sorted((e.revision, e.state, e.cause, e.acked_by, e.acked_ms, e.emitted_ms, e.ts_ms)
                                      for e in distinct if e.alert_id == a)} for a in twice}))
    assert sorted(e.alert_id for e in acked) == sorted(expected_a)
    assert {e.acked_by for e in acked} == {NURSE}
    assert not [e for e in distinct if e.patient_id == ward_b and e.cause in ("acknowledged", "snoozed")]
    snoozes = [e for e in distinct if e.cause == "snoozed"]
    assert [(e.alert_id, e.snoozed_by) for e in snoozes] == [(medium_1, NURSE)]
    assert snoozes[0].snoozed_until_ms is not None
    notes = [e for e in distinct if e.cause == "note"]
    assert [e.alert_id for e in notes] == [target["id"]]
    assert abs(snoozes[0].snoozed_until_ms - (snooze_sent + 15 * MIN)) < 60_000
    # no patient identifier in any service's log
    for proc in (gateway, *workers, console):
        assert not any(pid in proc.log_text() for pid in [*ward_a, ward_b]), proc.name



LOCK_NURSE, LOCK_PASSWORD = "nurse-l", "a long passphrase for the locked ward 9"
#: the shortest idle timeout the settings allow: the session of the test idles out within a minute
LOCK_IDLE_S = 30.0


def session_cookie(base: str, username: str, password: str) -> str:
    """Log in over HTTP; the ``Cookie`` header value of the new session."""
    req = urllib.request.Request(f"{base}/api/login", method="POST", data=orjson.dumps(
        {"username": username, "password": password}), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return str(r.headers["Set-Cookie"]).split(";")[0]


def test_locked_screen_keeps_the_wards_alarm(settings: Settings, spawn: Any, run_id: str, tmp_path: Path) -> None:
    """A shared ward screen left alone: after the idle timeout it locks (nothing of a patient in the page) but
    keeps the ward's alarm state live and audible; a silence runs out as it would have; a new high alert on
    the ward is counted and sounds; logging in brings the alert list back."""
    from selenium.webdriver.common.by import By

    first, second = f"L{run_id}-1", f"L{run_id}-2"
    enrollment = tmp_path / "enrollment.csv"
    enrollment.write_text(f"patient_id,ward,overrides_json\n{first},L,\n{second},L,\n")
    s = settings.model_copy(update={
        "enrollment_file": str(enrollment),
        "console_port": free_port(),
        "console_secret": f"locked-test-secret-{run_id}-0123456789abcdef",
        "console_idle_timeout_s": LOCK_IDLE_S,
    })
    base = f"http://127.0.0.1:{s.console_port}"
    gateway = spawn("gateway", s, "gateway")
    worker = spawn("worker", s, "worker")
    gateway.wait_log("gateway up")
    wait_until("the worker holding its partitions", lambda: "worker assigned" in worker.log_text(), timeout=120)
    console = spawn("console", s, "console")
    wait_ready(base, console)
    users_cli(s, "add", LOCK_NURSE, "--role", "nurse", "--ward", "L", "--password-stdin", password=LOCK_PASSWORD)

    start = int(time.time() * 1000) - 20 * MIN
    rows = {pid: cgm_rows(pid, start) for pid in (first, second)}
    expected = {pid: open_alerts_offline(pid, r) for pid, r in rows.items()}
    assert all(sorted(e.values()) == ["glucose_urgent_low", "glucose_urgent_low_soon"] for e in expected.values())
    secrets = [first, second, *expected[first], *expected[second]]
    # the first patient's alerts are open before the nurse logs in (the session's idle clock starts at login)
    publish(s, [(vitals_topic("sim", f"{first}-cgm"), orjson.dumps(rows[first]))])
    probe = session_cookie(base, LOCK_NURSE, LOCK_PASSWORD)  # a session of its own, never used again after this
    wait_until("the first patient's alerts in the console", lambda: {a["alert_id"] for a in http_json(
        "GET", f"{base}/api/alerts", cookie=probe)[1]["alerts"]} == set(expected[first]), timeout=120, every=1.0)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium(1280, 800) as b, screenshot_on_failure(b):
        b.get(f"{base}/")
        wait_until("the login form", lambda: b.find_element(By.ID, "login-form").is_displayed())
        login(b, LOCK_NURSE, LOCK_PASSWORD)
        # a one-minute silence (the account's preference), then the page reloaded with it
        status = b.execute_script("""return fetch('/api/me').then((r) => r.json()).then((me) => fetch(
            '/api/me/preferences', {method: 'PUT', headers: {'Content-Type': 'application/json',
            'X-CSRF-Token': me.csrf_token}, body: JSON.stringify({silence_minutes: 1})})).then((r) => r.status)""")
        assert status == 200
        b.refresh()
        wait_until("the alert list", lambda: {c["id"] for c in cards(b)} == set(expected[first]), timeout=30)
        assert (body_attr(b, "alarm"), body_attr(b, "sounding")) == ("high", "high")
        click(b, "#silence")
        wait_until("silenced", lambda: body_attr(b, "audio") == "silenced")
        silenced_at = time.monotonic()
        assert seconds_left(text(b, "#audio-state")) <= 60
        cookie = f"ww_session={b.get_cookie('ww_session')['value']}"

        # ---- nobody touches the screen: it locks (the idle timeout), the alarm state stays
        wait_until("the locked screen", lambda: body_attr(b, "view") == "locked", timeout=LOCK_IDLE_S + 30)
        assert b.find_element(By.ID, "locked-panel").is_displayed()
        assert b.find_element(By.ID, "login-form").is_displayed()
        assert not b.find_element(By.ID, "logged-out-warning").is_displayed()
        # the quiet stream carried the console's named keep-alive (15 s) before it ended: the page saw it
        assert int(body_attr(b, "keepalives") or 0) >= 1
        counts = "return Object.fromEntries([...document.querySelectorAll('#locked-counts .count')]" \
                 ".map((e) => [e.dataset.priority, Number(e.dataset.count)]))"
        wait_until("the ward's counts", lambda: b.execute_script(counts) == {"high": 1, "medium": 1, "low": 0})
        assert body_attr(b, "alarm") == "high"
        # the silence the nurse started runs out as it would have: silenced now, sounding after its countdown
        if time.monotonic() - silenced_at < 55:
            assert (body_attr(b, "audio"), body_attr(b, "sounding")) == ("silenced", "none")
            assert "silenced" in text(b, "#locked-alarm")
        wait_until("the alarm sounding again on the locked screen", lambda: body_attr(b, "sounding") == "high",
                   timeout=75)
        bursts = int(body_attr(b, "bursts"))
        wait_until("the high-priority burst repeating", lambda: int(body_attr(b, "bursts")) > bursts, timeout=15)
        # the ended session reads the counts and nothing else, and polling never revives it
        assert http_json("GET", f"{base}/api/me", cookie=cookie)[0] == 401
        assert http_json("GET", f"{base}/api/alerts", cookie=cookie)[0] == 401
        status, doc = http_json("GET", f"{base}/api/alarm-status", cookie=cookie)
        assert status == 200 and (doc["session"], doc["wards"], doc["counts"]) == (
            "idle", ["L"], {"high": 1, "medium": 1, "low": 0})

        # ---- a new high alert on the locked ward: counted and sounding, still nothing of the patient
        publish(s, [(vitals_topic("sim", f"{second}-cgm"), orjson.dumps(rows[second]))])
        wait_until("the second patient's alerts counted", lambda: b.execute_script(counts) == {
            "high": 2, "medium": 2, "low": 0}, timeout=120, every=1.0)
        assert (body_attr(b, "view"), body_attr(b, "alarm"), body_attr(b, "audio")) == ("locked", "high", "on")
        bursts = int(body_attr(b, "bursts"))
        wait_until("the alarm sounding", lambda: body_attr(b, "sounding") == "high"
                   and int(body_attr(b, "bursts")) > bursts, timeout=15)
        assert "HIGH PRIORITY ALARM" in text(b, "#locked-alarm") and "sounding" in text(b, "#locked-alarm")
        dom = str(b.page_source)
        leaked = [x for x in secrets if x in dom or x in b.title]
        assert not leaked, f"patient or alert ids on the locked screen: {leaked}"
        assert not cards(b) and "mg/dL" not in text(b, "body")
        b.save_screenshot(str(ARTIFACTS / "console-locked.png"))
        # a reloaded locked screen locks again at once (the session cookie is all it has)
        b.refresh()
        wait_until("locked after a reload", lambda: body_attr(b, "view") == "locked"
                   and b.execute_script(counts) == {"high": 2, "medium": 2, "low": 0})
        wait_until("sounding after the reload", lambda: body_attr(b, "sounding") == "high")
        assert not [x for x in secrets if x in str(b.page_source)]

        # ---- the console goes away: the locked screen says its counts are stale, keeps the last alarm sounding,
        # and after 30 s raises the technical alarm; when the console is back it is current again by itself
        console.stop()
        first_console = console
        wait_until("the stale alarm state said", lambda: b.execute_script(
            "return document.getElementById('locked-alarm').dataset.level") == "stale", timeout=15)
        wait_until("the technical alarm", lambda: body_attr(b, "technical") == "lost", timeout=45)
        assert "ALARM STATE NOT UPDATED" in text(b, "#locked-alarm") and body_attr(b, "view") == "locked"
        assert (body_attr(b, "alarm"), body_attr(b, "sounding")) == ("high", "high")  # the louder one goes on
        console = spawn("console", s, "console")
        wait_ready(base, console)
        wait_until("current again", lambda: b.execute_script(
            "return document.getElementById('locked-alarm').dataset.level") == "high"
            and body_attr(b, "technical") == "none", timeout=30)
        assert b.execute_script(counts) == {"high": 2, "medium": 2, "low": 0}

        # ---- someone logs in: the alert list is back, the alarm follows the alerts again
        login(b, LOCK_NURSE, LOCK_PASSWORD)
        every = {*expected[first], *expected[second]}
        wait_until("the alert list again", lambda: {c["id"] for c in cards(b)} == every, timeout=30)
        assert not b.find_element(By.ID, "locked-panel").is_displayed()
        assert body_attr(b, "alarm") == "high"
        assert script_errors(b) == []

    # one audit record for the locked screen per console process that answered it (the page asked every 2 s),
    # none for any patient
    records = [AuditRecord.model_validate_json(r.value) for r in consume_all(s, s.topic_audit, idle_s=2.0)]
    ours = Counter(r.action for r in records if r.actor == LOCK_NURSE)
    assert ours == Counter({"login": 3, "preferences": 1, "screen_locked": 2}), ours
    assert [r.detail for r in records if r.action == "screen_locked"] == [{"reason": "idle"}] * 2
    for proc in (gateway, worker, first_console, console):
        assert not any(pid in proc.log_text() for pid in (first, second)), proc.name


#: the page's bound (console.js): a stream silent this long is dead; keep-alives come every 15 s
STALL_S = 35.0


def test_a_stalled_stream_is_reopened_within_its_bound(settings: Settings, spawn: Any, run_id: str) -> None:
    """The stream's network path dies without a reset (a proxy or a Wi-Fi switch): the connection looks open but
    nothing arrives. The console's named keep-alives let the page notice: it reopens the stream within the
    stall bound plus its first reconnection delay, and is live again without a reload."""
    from selenium.webdriver.common.by import By

    s = settings.model_copy(update={"console_port": free_port(),
                                    "console_secret": f"stall-test-secret-{run_id}-0123456789abcdef"})
    console = spawn("console", s, "console")
    wait_ready(f"http://127.0.0.1:{s.console_port}", console)
    users_cli(s, "add", NURSE, "--role", "nurse", "--ward", "A", "--password-stdin", password=NURSE_PASSWORD)
    proxy = StallingProxy(s.console_port)
    try:
        with chromium(1280, 800) as b, screenshot_on_failure(b):
            b.get(f"http://127.0.0.1:{proxy.port}/")
            wait_until("the login form", lambda: b.find_element(By.ID, "login-form").is_displayed())
            login(b, NURSE, NURSE_PASSWORD)
            wait_until("live", lambda: body_attr(b, "conn") == "live")
            # the first keep-alive: from then on the page knows this console sends them
            wait_until("a keep-alive", lambda: int(body_attr(b, "keepalives") or 0) >= 1, timeout=25)
            seen = int(body_attr(b, "keepalives"))
            assert proxy.streams == 1
            assert proxy.stall_streams() == 1
            stalled_at = time.monotonic()
            wait_until("the stalled stream noticed", lambda: body_attr(b, "conn") != "live", timeout=STALL_S + 10)
            noticed = time.monotonic() - stalled_at
            wait_until("live again on a new stream", lambda: body_attr(b, "conn") == "live", timeout=15)
            back = time.monotonic() - stalled_at
            logging.getLogger(__name__).info("stalled stream noticed after %.1f s, live again after %.1f s",
                                             noticed, back)
            # the last event before the stall came at most 15 s earlier: noticed after 20-35 s of silence here
            assert STALL_S - 15 - 1 <= noticed <= STALL_S + 2, noticed
            assert back <= STALL_S + 2 + 1.2 + 3, back  # + the first backoff (1 s ± 20 %) + the snapshot
            assert proxy.streams == 2 and int(body_attr(b, "keepalives")) == seen
            assert body_attr(b, "view") == "alerts" and script_errors(b) == []
    finally:
        proxy.close()
