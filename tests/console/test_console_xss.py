"""Every user-controlled string the console renders carries an XSS payload, put there through the
real API (data set names and file names, column names, labels, a job's name and metadata, the
adapter's name it inherits, a playground input, and error messages that echo input), and every
page is rendered in Chromium: no payload runs and no element it describes appears.

The page's content security policy would stop inline handlers on its own, so these pages are
rendered with the policy bypassed (Chrome DevTools' Page.setBypassCSP; a probe first proves that
inline handlers then run): what is checked is the console's escaping itself. A second test
checks the policy and the other security headers, and that Chromium enforces the policy.

Tenant names are not shown anywhere in the console (it never asks for them), so none is here.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import httpx
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.console.test_console import message, sign_in, wait

# Each payload sets its own number, so a failure says which one ran.
DATASET_NAME = "<img src=x onerror=__pwned=1 class=xss-injected>"
FILE_NAME = "<svg onload=__pwned=2 class=xss-injected>.csv"  # no '/': file names refuse paths
TEXT_COLUMN = '"><script>__pwned=3</script><b class=xss-injected>x</b>'
LABEL_COLUMN = "'><img src=x onerror=__pwned=4 class=xss-injected>"
LABELS = (
    '<iframe srcdoc="<script>parent.__pwned=5</script>" class=xss-injected></iframe>',
    "javascript:__pwned=6//<a href=javascript:__pwned=7 class=xss-injected>x</a>",
)
JOB_NAME = "</td><img src=x onerror=__pwned=8 class=xss-injected><td>"
METADATA = {"<img src=x onerror=__pwned=9 class=xss-injected>": "javascript:__pwned=10"}
PLAYGROUND_INPUT = "<img src=x onerror=__pwned=11 class=xss-injected>"
NESTED_COLUMN = "<img src=x onerror=__pwned=12 class=xss-injected>"  # echoed by a 422
SUFFIX = ".<svg onload=__pwned=13 class=xss-injected>"  # echoed by a 415

# What the page holds that a payload would have made: its marker class, inline handlers,
# javascript: URLs, and elements the console never creates itself.
INSPECT = """
const found = [];
for (const node of document.querySelectorAll("*")) {
  if (node.classList.contains("xss-injected")) found.push(node.outerHTML.slice(0, 120));
  for (const attr of node.attributes) {
    const url = ["href", "src", "action", "formaction", "srcdoc"].includes(attr.name);
    if (attr.name.startsWith("on") || (url && /^\\s*javascript:/i.test(attr.value))) {
      found.push(`${node.tagName} ${attr.name}=${attr.value.slice(0, 80)}`);
    }
  }
  const own = node.tagName === "SCRIPT" && node.getAttribute("src") === "console.js";
  if (["SCRIPT", "IFRAME", "IMG", "OBJECT", "EMBED"].includes(node.tagName) && !own) {
    found.push(node.outerHTML.slice(0, 120));
  }
}
return {pwned: window.__pwned === undefined ? null : window.__pwned, injected: found};
"""
SHOWN = (
    "return document.getElementById('view').textContent + '\\n' + "
    "document.getElementById('message').textContent;"
)


def write_payload_csv(path: Path, rows: int = 48) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([TEXT_COLUMN, LABEL_COLUMN])
        for i in range(rows):
            words = "good fine great" if i % 2 else "bad dull awful"
            writer.writerow([f"{words} {i}", LABELS[i % 2]])
    return path


CLEAN = {"pwned": None, "injected": []}


def inert(driver: Any, *texts: str) -> None:
    """The page shows each text as text (so the payload reached it), and nothing ran or was
    injected; a payload that did run or inject ends the wait at once."""

    def settled(d: Any) -> dict[str, Any] | None:
        state = d.execute_script(INSPECT)
        if state != CLEAN:
            return state
        shown = d.execute_script(SHOWN)
        return state if all(text in shown for text in texts) else None

    assert wait(driver, settled, f"the page to show {texts}") == CLEAN


def bypass_csp(driver: Any, url: str) -> None:
    """Turn the page's CSP off and prove it is off: an injected inline handler runs."""
    driver.execute_cdp_cmd("Page.setBypassCSP", {"enabled": True})
    driver.get(f"{url}/ui/")
    driver.execute_script(
        "document.body.insertAdjacentHTML('beforeend', "
        "'<img id=probe src=x onerror=\"window.__probe = 1\">');"
    )
    wait(driver, lambda d: d.execute_script("return window.__probe") == 1, "the probe to run")
    driver.refresh()


def test_no_payload_runs_on_any_page(live, browser, tmp_path: Path) -> None:
    api = live.client
    data = write_payload_csv(tmp_path / "payloads.csv")
    with data.open("rb") as handle:
        named = api.ok(
            "POST", "/datasets", files={"file": ("p.csv", handle)}, data={"name": DATASET_NAME}
        )
    with data.open("rb") as handle:
        by_file = api.ok("POST", "/datasets", files={"file": (FILE_NAME, handle)})
    assert (named["name"], by_file["name"]) == (DATASET_NAME, FILE_NAME)
    assert named["columns"] == [TEXT_COLUMN, LABEL_COLUMN]
    body = {
        "base_model": "tiny",
        "task": "classification",
        "dataset_id": named["id"],
        "columns": {"text": TEXT_COLUMN, "label": LABEL_COLUMN},
        "training": {"max_steps": 6, "batch_size": 8},
        "name": JOB_NAME,
        "metadata": METADATA,
    }
    job_id = api.ok("POST", "/jobs", json=body)["id"]
    job = api.wait_status(job_id, {"succeeded", "failed", "cancelled"}, [])
    assert job["status"] == "succeeded", job
    adapter = api.ok("GET", f"/adapters/{job['adapter_id']}")
    assert adapter["name"] == JOB_NAME and sorted(adapter["labels"]) == sorted(LABELS)

    bypass_csp(browser, live.url)
    sign_in(browser, live.url, live.key)
    wait(browser, lambda d: d.find_element(By.ID, "new-job"), "the jobs page")
    inert(browser, JOB_NAME, DATASET_NAME, FILE_NAME)  # the list and the form's data sets
    Select(browser.find_element(By.ID, "job-dataset")).select_by_value(named["id"])
    inert(browser, TEXT_COLUMN, LABEL_COLUMN)  # the form's column choices

    browser.get(f"{live.url}/ui/#/jobs/{job_id}")
    inert(browser, f"Job {JOB_NAME}")
    browser.get(f"{live.url}/ui/#/datasets")
    inert(browser, DATASET_NAME, FILE_NAME, f"{TEXT_COLUMN}, {LABEL_COLUMN}")
    browser.get(f"{live.url}/ui/#/adapters")
    inert(browser, JOB_NAME)
    browser.get(f"{live.url}/ui/#/adapters/{adapter['id']}")
    inert(browser, f"Adapter {JOB_NAME}", ", ".join(adapter["labels"]))

    browser.get(f"{live.url}/ui/#/playground")
    inputs = wait(browser, lambda d: d.find_element(By.ID, "inputs"), "the playground")
    inputs.send_keys(PLAYGROUND_INPUT)
    browser.find_element(By.ID, "run").click()
    answer = wait(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#playground-table td.output"),
        "the playground's answer",
    )
    assert answer[0].text.split(" (")[0] in LABELS
    inert(browser, PLAYGROUND_INPUT, f"{JOB_NAME} · classification")

    # Error messages that echo what was sent.
    browser.get(f"{live.url}/ui/#/datasets")
    nested = tmp_path / "nested.jsonl"
    nested.write_text(json.dumps({NESTED_COLUMN: {"a": 1}}) + "\n")
    wait(browser, lambda d: d.find_element(By.ID, "upload-file"), "the upload form").send_keys(
        str(nested)
    )
    browser.find_element(By.CSS_SELECTOR, "#upload button").click()
    # The message box keeps the last message until the next one: wait for this one's words.
    wait(browser, lambda d: "(422)" in message(d), "the nested-value error")
    inert(browser, NESTED_COLUMN)

    browser.get(f"{live.url}/ui/#/datasets")
    odd = tmp_path / f"x{SUFFIX}"
    odd.write_text("text\nhello\n")
    wait(browser, lambda d: d.find_element(By.ID, "upload-file"), "the upload form").send_keys(
        str(odd)
    )
    browser.find_element(By.CSS_SELECTOR, "#upload button").click()
    wait(browser, lambda d: "(415)" in message(d), "the file type error")
    inert(browser, SUFFIX)

    browser.get(f"{live.url}/ui/#/jobs")
    form = wait(browser, lambda d: d.find_element(By.ID, "new-job"), "the job form")
    Select(form.find_element(By.ID, "job-dataset")).select_by_value(named["id"])
    Select(form.find_element(By.ID, "job-model")).select_by_value("tiny")
    Select(form.find_element(By.ID, "job-task")).select_by_value("regression")
    Select(form.find_element(By.ID, "job-text")).select_by_value(TEXT_COLUMN)
    Select(form.find_element(By.ID, "job-label")).select_by_value(LABEL_COLUMN)
    form.find_element(By.ID, "start-job").click()
    wait(browser, lambda d: "must be numeric" in message(d), "the regression target error")
    inert(browser, f"regression target {LABEL_COLUMN!r}")


CONSOLE_POLICY = {
    "default-src": "'self'",
    "script-src": "'self'",
    "frame-ancestors": "'none'",
    "base-uri": "'none'",
}


def policy(header: str) -> dict[str, str]:
    parts = (p.strip().split(None, 1) for p in header.split(";") if p.strip())
    return {p[0]: p[1] if len(p) > 1 else "" for p in parts}


def test_security_headers_and_the_policy_is_enforced(live, browser) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as http:
        for path in ("/ui/", "/ui/console.js", "/ui/console.css"):
            page = http.get(path)
            assert page.status_code == 200, path
            directives = policy(page.headers["content-security-policy"])
            for name, value in CONSOLE_POLICY.items():
                assert directives.get(name) == value, (path, directives)
            assert "'unsafe-inline'" not in directives["script-src"]
            assert page.headers["x-content-type-options"] == "nosniff", path
            assert page.headers["referrer-policy"] == "no-referrer", path
        key = {"Authorization": f"Bearer {live.key}"}
        for method, path, status in (
            ("GET", "/healthz", 200),
            ("GET", "/jobs", 200),
            ("GET", "/jobs/job_missing", 404),
            ("GET", "/jobs", 401),  # no key
            ("POST", "/datasets", 415),
        ):
            answer = http.request(method, path, headers={} if status == 401 else key)
            assert answer.status_code == status, (path, answer.text)
            assert answer.headers["content-type"].startswith("application/json"), path
            assert answer.headers["x-content-type-options"] == "nosniff", path

    # Chromium enforces the policy: an inline handler injected into the page is refused.
    browser.execute_cdp_cmd("Page.setBypassCSP", {"enabled": False})
    browser.get(f"{live.url}/ui/")
    browser.execute_script(
        "window.__violations = [];"
        "document.addEventListener('securitypolicyviolation',"
        " (e) => window.__violations.push(e.effectiveDirective));"
        "document.body.insertAdjacentHTML('beforeend',"
        " '<img src=x onerror=\"window.__probe = 1\">');"
    )
    violations = wait(
        browser, lambda d: d.execute_script("return window.__violations"), "a CSP violation"
    )
    assert any(v.startswith("script-src") for v in violations), violations
    assert browser.execute_script("return window.__probe") is None
