"""The web console in a real browser: sign in, upload a data set, start a job on a tiny model,
watch its curves grow live, scrub the rank history, run the playground, and read clear messages
for a bad key, a bad file and a missing job.

With ADALORA_SCREENSHOTS=<folder> the journey also saves a screenshot of each page there (the
ones in docs/images were made that way).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

# Liveness guards only: how long to wait before calling the page stuck, never a speed claim.
PATIENCE_S = 180
STEPS = 1200


def wait(driver: Any, check: Callable[[Any], Any], what: str, timeout: float = PATIENCE_S) -> Any:
    """Poll ``check`` until it answers; an element replaced mid-check by a redraw is retried."""
    retry = (NoSuchElementException, StaleElementReferenceException)
    waiting = WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=retry)
    return waiting.until(check, message=what)


def screenshot(driver: Any, name: str) -> None:
    folder = os.environ.get("ADALORA_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"console-{name}.png"))


def message(driver: Any) -> str:
    box = driver.find_element(By.ID, "message")
    return box.text if box.is_displayed() else ""


def sign_in(driver: Any, url: str, key: str) -> None:
    driver.get(f"{url}/ui/")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()  # a page left signed in by an earlier test keeps its key in memory
    driver.get(f"{url}/ui/#/jobs")
    field = wait(driver, lambda d: d.find_element(By.ID, "api-key"), "the sign-in form")
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#sign-in button").click()


# Read in one script: the live page redraws its charts, so an element found in one call may be
# gone by the next.
def chart_points(driver: Any, title: str) -> int:
    script = "const s = document.querySelector(`svg[aria-label='${arguments[0]}']`);"
    return int(driver.execute_script(script + "return s ? s.dataset.points : 0;", title))


def status(driver: Any) -> str:
    script = "const b = document.querySelector('#view h2 .status'); return b && b.dataset.status;"
    return driver.execute_script(script) or ""


def test_a_bad_key_gets_a_clear_message_and_is_not_kept(live, browser) -> None:
    sign_in(browser, live.url, "adk_" + "x" * 40)
    text = wait(browser, message, "an error message")
    assert "refused (401)" in text
    assert browser.find_element(By.ID, "api-key").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('adalora.apiKey')") is None
    assert browser.execute_script("return document.cookie") == ""


def test_every_api_error_reads_as_a_sentence(live, browser) -> None:
    """The console's one error formatter, run in the page, for the statuses the API answers."""
    browser.get(f"{live.url}/ui/")
    script = "return arguments[0].map(([s, c, m, f, r]) => describe(new ApiError(s, c, m, f, r)));"
    cases = [
        [401, "unauthorized", "bad key", None, None],
        [404, "not_found", "job 'x' not found", None, None],
        [409, "conflict", "job 'x' is succeeded", None, None],
        [422, "validation_error", "must be >= 1", "training.max_steps", None],
        [429, "rate_limited", "too many requests", None, "3"],
        [503, "not_ready", "database down", None, None],
    ]
    said = browser.execute_script(script, cases)
    assert "refused (401)" in said[0]
    assert said[1] == "Not found (404): job 'x' not found"
    assert said[2] == "Conflict (409): job 'x' is succeeded"
    assert said[3] == "Invalid input (training.max_steps) (422): must be >= 1"
    assert "retry in 3 s" in said[4] and "(429)" in said[4]
    assert said[5].startswith("The service is not ready (503): database down")


def test_the_console_journey(live, browser, tmp_path: Path) -> None:
    sign_in(browser, live.url, live.key)
    wait(browser, lambda d: d.find_element(By.ID, "new-job"), "the jobs page")
    # The key is kept for this tab only, never in a cookie.
    assert browser.execute_script("return sessionStorage.getItem('adalora.apiKey')") == live.key
    assert browser.execute_script("return document.cookie") == ""

    # Data sets: a broken file is refused with the line named; a good one is listed.
    browser.get(f"{live.url}/ui/#/datasets")
    wait(browser, lambda d: d.find_element(By.ID, "upload"), "the data sets page")
    broken = tmp_path / "broken.csv"
    broken.write_text("text,label\na good film,positive\nbad plot,negative,extra\n")
    browser.find_element(By.ID, "upload-file").send_keys(str(broken))
    browser.find_element(By.CSS_SELECTOR, "#upload button").click()
    text = wait(browser, message, "the upload error")
    assert "422" in text and "line 3" in text, text
    browser.find_element(By.ID, "upload-file").send_keys(str(live.data))
    browser.find_element(By.ID, "upload-name").send_keys("console-sentiment")
    browser.find_element(By.CSS_SELECTOR, "#upload button").click()
    wait(
        browser,
        lambda d: "console-sentiment" in d.find_element(By.ID, "datasets-table").text,
        "the uploaded data set",
    )
    assert f"Uploaded {live.data.name}" in message(browser)
    screenshot(browser, "datasets")

    # Start a job from the form and watch it train.
    browser.get(f"{live.url}/ui/#/jobs")
    form = wait(browser, lambda d: d.find_element(By.ID, "new-job"), "the job form")
    Select(form.find_element(By.ID, "job-dataset")).select_by_visible_text(
        "console-sentiment (48 rows)"
    )
    Select(form.find_element(By.ID, "job-model")).select_by_value("tiny")
    assert Select(form.find_element(By.ID, "job-label")).first_selected_option.text == "label"
    form.find_element(By.ID, "job-steps").send_keys(str(STEPS))
    form.find_element(By.ID, "start-job").click()
    wait(browser, lambda d: "#/jobs/job_" in d.current_url, "the job page")
    job_id = browser.current_url.rsplit("/", 1)[-1]

    # The curves grow while the job runs: two readings that differ, both before it ended.
    first = wait(
        browser,
        lambda d: status(d) == "running" and chart_points(d, "Training loss"),
        "a first loss point",
    )
    wait(browser, lambda d: chart_points(d, "Training loss") > first, "the loss curve growing")
    wait(browser, lambda d: status(d) == "succeeded", "the job to succeed")
    wait(browser, lambda d: chart_points(d, "Training loss") == STEPS, "every update on the curve")
    assert chart_points(browser, "Learning rate") == STEPS
    budget_chart = "Rank budget (triplets) against its cubic schedule"
    assert chart_points(browser, budget_chart) == STEPS
    settings = browser.find_element(By.ID, "settings").text
    assert f"training.max_steps {STEPS}" in settings and "chosen by the service" in settings
    assert "status" in browser.find_element(By.ID, "event-log").text
    assert browser.find_element(By.ID, "cancel-job").get_attribute("disabled") is not None
    screenshot(browser, "job")

    # The list shows it with its progress and the settings it ran with.
    browser.get(f"{live.url}/ui/#/jobs")
    row = wait(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, f"tr[data-job='{job_id}']"),
        "the job row",
    )
    assert "succeeded" in row.text and f"{STEPS}/{STEPS}" in row.text
    assert f"{STEPS:,} updates" in row.text and "rank 12→8" in row.text
    screenshot(browser, "jobs")
    browser.get(f"{live.url}/ui/#/jobs/{job_id}")

    # The allocation: scrub from init_r everywhere to the final pattern.
    # The job page redraws its header as the replayed events arrive, so the link is read in one
    # script and followed, not clicked (a found element may be replaced before the click).
    link = "const a = document.getElementById('job-adapter'); return a && a.getAttribute('href');"
    href = wait(browser, lambda d: d.execute_script(link), "the adapter link")
    assert href.startswith("#/adapters/ad_")
    browser.get(f"{live.url}/ui/{href}")
    slider = wait(browser, lambda d: d.find_element(By.ID, "history-slider"), "the rank history")
    adapter = live.client.http.get(f"/adapters/{live.client.job(job_id)['adapter_id']}").json()
    ranks = live.client.http.get(f"/adapters/{adapter['id']}/ranks").json()
    last = int(slider.get_attribute("max"))
    assert last >= len(ranks["history"]) >= 2

    def scrub(position: int) -> int:
        browser.execute_script(
            "arguments[0].value = arguments[1];arguments[0].dispatchEvent(new Event('input'));",
            slider,
            position,
        )
        return int(browser.find_element(By.ID, "grand-total").text)

    assert scrub(0) == ranks["init_r"] * len(ranks["modules"])
    assert "before masking" in browser.find_element(By.ID, "frame-caption").text
    middle = ranks["history"][len(ranks["history"]) // 2 - 1]
    assert scrub(len(ranks["history"]) // 2) == sum(middle["ranks"].values())
    assert f"after update {middle['step']}" in browser.find_element(By.ID, "frame-caption").text
    assert scrub(last) == adapter["total_rank"]
    cells = browser.find_elements(By.CSS_SELECTOR, "#heatmap td.cell")
    assert sorted(int(c.text) for c in cells) == sorted(m["rank"] for m in ranks["modules"])
    scrub(0)
    browser.find_element(By.ID, "play").click()
    wait(browser, lambda d: int(slider.get_attribute("value")) > 0, "the history playing")
    wait(
        browser,
        lambda d: int(slider.get_attribute("value")) == last,
        "the history reaching the end",
    )
    screenshot(browser, "allocation")

    # The playground: the same inputs through two adapters side by side (here the same one
    # twice, so the two columns must agree).
    browser.get(f"{live.url}/ui/#/playground")
    inputs = wait(browser, lambda d: d.find_element(By.ID, "inputs"), "the playground")
    Select(browser.find_element(By.ID, "adapter-b")).select_by_value(adapter["id"])
    inputs.send_keys("a good film\nbad plot, dull")
    browser.find_element(By.ID, "run").click()
    outputs = wait(
        browser,
        lambda d: d.find_elements(By.CSS_SELECTOR, "#playground-table td.output"),
        "outputs",
    )
    texts = [o.text for o in outputs]
    assert len(texts) == 4 and texts[0] == texts[1] and texts[2] == texts[3], texts
    assert all(t.split(" ")[0] in ("positive", "negative") and "%" in t for t in texts)
    screenshot(browser, "playground")

    browser.get(f"{live.url}/ui/#/adapters")
    wait(
        browser,
        lambda d: d.find_element(By.CSS_SELECTOR, f"tr[data-adapter='{adapter['id']}']"),
        "the adapter row",
    )
    screenshot(browser, "adapters")

    # Delete the adapter from its page: it leaves the list.
    browser.get(f"{live.url}/ui/#/adapters/{adapter['id']}")
    wait(browser, lambda d: d.find_element(By.ID, "delete-adapter"), "the adapter page").click()
    browser.switch_to.alert.accept()
    wait(browser, lambda d: d.current_url.endswith("#/adapters"), "the adapter list")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#view h2"), "the list's heading")
    assert adapter["id"] not in browser.find_element(By.ID, "view").text
    assert live.client.http.get(f"/adapters/{adapter['id']}").status_code == 404

    # A job that is not there: a clear 404, not a blank page.
    browser.get(f"{live.url}/ui/#/jobs/job_missing")
    assert "Not found (404)" in wait(browser, message, "the 404 message")


def test_import_a_peft_adapter_from_the_adapters_page(live, browser, tmp_path: Path) -> None:
    """The import form: PEFT's zip on the service's tiny base; a wrong label count reads as a
    sentence naming the field, the right one opens the new adapter's page."""
    import peft
    from transformers import AutoModelForSequenceClassification

    from tests.peft_adapters import perturb, zip_dir

    base = AutoModelForSequenceClassification.from_pretrained(live.data.parent / "tiny")
    model = peft.get_peft_model(
        base, peft.LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query", "value"])
    )
    perturb(model, seed=4)
    model.save_pretrained(tmp_path / "peft")
    archive = tmp_path / "console-lora.zip"
    archive.write_bytes(zip_dir(tmp_path / "peft"))

    sign_in(browser, live.url, live.key)
    wait(browser, lambda d: d.find_element(By.ID, "new-job"), "the jobs page")
    browser.get(f"{live.url}/ui/#/adapters")
    form = wait(browser, lambda d: d.find_element(By.ID, "import"), "the import form")
    Select(form.find_element(By.ID, "import-base")).select_by_visible_text("tiny")
    form.find_element(By.ID, "import-file").send_keys(str(archive))
    form.find_element(By.ID, "import-labels").send_keys("a, b, c")
    form.find_element(By.ID, "import-name").send_keys("console-lora")
    form.find_element(By.CSS_SELECTOR, "button").click()
    text = wait(browser, message, "the import error")
    assert "422" in text and "labels" in text and "3 labels for a head of 2 classes" in text, text

    labels = form.find_element(By.ID, "import-labels")
    labels.clear()
    labels.send_keys("negative, positive")
    form.find_element(By.CSS_SELECTOR, "button").click()
    wait(browser, lambda d: "#/adapters/ad_" in d.current_url, "the imported adapter's page")
    wait(browser, lambda d: d.find_element(By.CLASS_NAME, "allocation"), "its rank view")
    browser.get(f"{live.url}/ui/#/adapters")
    wait(
        browser,
        lambda d: "console-lora" in d.find_element(By.ID, "adapters-table").text,
        "the imported adapter in the list",
    )
    screenshot(browser, "adapter-import")
