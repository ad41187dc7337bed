"""The web page in a real headless Chromium against the real stack, at 1280 and 375 px: the form built from the task
types, a background removal from upload to download, the style picker, cancel, reload, recent tasks, errors and the
random-weights note. With SCREENSHOT_DIR set, each view is saved there (whole page) for a look."""

import os
import shutil
from pathlib import Path

import pytest

from tasks.celery_app import celery_app

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
WIDTHS = (1280, 375)


@pytest.fixture
def open_browser(tmp_path):
    """Opens Chromium at a CSS width (a phone's 375 px by device emulation: a window cannot be that narrow)."""
    from selenium import webdriver

    assert CHROMIUM and CHROMEDRIVER, "Debian's chromium and chromium-driver are needed (.ci/run installs them)"
    drivers = []

    def start(width: int = 1280):
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                     "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     f"--window-size={max(width, 800)},1000", f"--user-data-dir={tmp_path / f'profile-{width}'}"):
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
        _emulate(driver, width, 1000)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


def screenshot(driver, name: str) -> None:
    """The whole page (not only the viewport) under $SCREENSHOT_DIR, when it is set."""
    folder = os.environ.get("SCREENSHOT_DIR")
    if not folder:
        return
    width = driver.execute_script("return screen.width")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    _emulate(driver, width, height)
    Path(folder).mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(Path(folder) / f"{name}-{width}.png"))
    _emulate(driver, width, 1000)


def _emulate(driver, width: int, height: int) -> None:
    """A screen of this CSS size (a phone's below 800 px), so that `screen.width` says it too."""
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "screenWidth": width, "screenHeight": height, "deviceScaleFactor": 1,
        "mobile": width < 800})


def _ready(driver, stack, task_type: str, path: str = "/"):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver.get(f"{stack.api_url}{path}")
    wait = WebDriverWait(driver, 120, poll_frequency=0.2)
    wait.until(lambda d: len(Select(d.find_element(By.ID, "task_type")).options) >= 1)
    Select(driver.find_element(By.ID, "task_type")).select_by_value(task_type)
    return wait


def _fits(driver) -> bool:
    """Nothing wider than the screen: no sideways scrolling (a phone would zoom out to show it all)."""
    return driver.execute_script("return document.documentElement.scrollWidth <= screen.width")


def _visible_text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.ID, element_id)
    return element.text if element.is_displayed() else ""


@pytest.mark.parametrize("width", WIDTHS)
def test_a_background_removal_from_upload_to_download(open_browser, stack, tmp_path, astronaut_png, width):
    from selenium.webdriver.common.by import By

    image = tmp_path / "astronaut.png"
    image.write_bytes(astronaut_png)
    browser = open_browser(width)
    wait = _ready(browser, stack, "background_removal")
    assert not browser.find_element(By.ID, "prompt").is_displayed()  # the type does not use one
    browser.find_element(By.ID, "image").send_keys(str(image))
    browser.find_element(By.ID, "submit").click()

    wait.until(lambda d: "?task=" in d.current_url)
    task_id = browser.current_url.split("?task=")[1]
    wait.until(lambda d: d.find_element(By.ID, "progress").get_attribute("value") == "100")
    wait.until(lambda d: d.execute_script(
        "const img = document.getElementById('result-image'); return img.complete && img.naturalWidth;") == 512)
    assert "SUCCESS" in browser.find_element(By.ID, "progress-text").text
    facts = dict(zip([dt.text for dt in browser.find_elements(By.CSS_SELECTOR, "#result-metadata dt")],
                     [dd.text for dd in browser.find_elements(By.CSS_SELECTOR, "#result-metadata dd")], strict=True))
    assert facts["Model"] == "u2netp" and not browser.find_element(By.ID, "noise-note").is_displayed()
    download = browser.find_element(By.ID, "download")
    assert download.get_attribute("download") == f"astronaut-background_removal-{task_id[:8]}.png"
    assert browser.find_element(By.ID, "before-after").is_displayed()  # the upload beside the cut-out
    assert not browser.find_element(By.ID, "cancel").is_displayed()
    recent = browser.find_elements(By.CSS_SELECTOR, "#recent li")
    assert recent and recent[0].get_attribute("data-task") == task_id
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#recent li .badge").text == "success")
    assert not browser.find_element(By.ID, "form-error").is_displayed() and _fits(browser)
    screenshot(browser, "result")

    browser.refresh()  # the task id is in the URL: a reload shows the same task again
    wait.until(lambda d: d.find_element(By.ID, "result-section").is_displayed())
    assert browser.find_element(By.ID, "task-label").text == task_id[:8]


@pytest.mark.parametrize("width", WIDTHS)
def test_the_form_follows_the_task_types(open_browser, stack, width):
    from selenium.webdriver.common.by import By

    browser = open_browser(width)
    _ready(browser, stack, "image_generation")
    prompt = browser.find_element(By.ID, "prompt")
    assert prompt.is_displayed() and prompt.get_attribute("required") == "true"
    assert not browser.find_elements(By.CSS_SELECTOR, "#uploads input")
    browser.find_element(By.ID, "parameters-summary").click()
    steps = browser.find_element(By.ID, "param-num_inference_steps")
    assert (steps.get_attribute("type"), steps.get_attribute("min"), steps.get_attribute("max"),
            steps.get_attribute("value")) == ("number", "1", "150", "30")
    assert browser.find_element(By.ID, "param-width").get_attribute("step") == "8"
    scheduler = browser.find_element(By.ID, "param-scheduler")
    assert scheduler.tag_name == "select" and "euler" in scheduler.text and "Default" in scheduler.text
    assert browser.find_element(By.ID, "param-refine_prompt").get_attribute("type") == "checkbox"

    wait = _ready(browser, stack, "style_transfer")
    assert browser.find_element(By.ID, "prompt-label").text == "Prompt (optional)"
    assert browser.find_element(By.ID, "param-strength").get_attribute("type") == "range"
    thumbnails = "return [...document.querySelectorAll('#styles img')].map((img) => img.complete && img.naturalWidth)"
    wait.until(lambda d: len(d.execute_script(thumbnails)) == 27 and all(d.execute_script(thumbnails)))
    assert browser.execute_script(thumbnails)[1:] == [128] * 26  # the unstyled sample, then each built-in style
    assert _fits(browser)
    screenshot(browser, "styles")


def test_the_style_picker_steps_aside_for_a_style_image(open_browser, stack, tmp_path, astronaut_png):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = open_browser()
    _ready(browser, stack, "style_transfer")
    WebDriverWait(browser, 60).until(lambda d: d.execute_script(
        "return [...document.querySelectorAll('#styles img')].every((img) => img.complete && img.naturalWidth)"))
    style_image = tmp_path / "style.png"
    style_image.write_bytes(astronaut_png)
    browser.find_element(By.ID, "style_image").send_keys(str(style_image))
    radios = browser.find_elements(By.CSS_SELECTOR, "input[name=style-choice]")
    assert radios and all(not radio.is_enabled() for radio in radios)
    assert "style image is chosen" in browser.find_element(By.ID, "style-hint").text


def test_cancel_reload_and_recent_tasks(open_browser, stack):
    """A task that cannot start (its queue has no consumer for now) is cancelled from the page; the recent list
    opens it again."""
    from selenium.webdriver.common.by import By

    browser = open_browser()
    wait = _ready(browser, stack, "image_enhancement")
    browser.find_element(By.CSS_SELECTOR, "#uploads button.link").click()  # the generated sample picture
    wait.until(lambda d: d.execute_script("return document.getElementById('image').files.length") == 1)
    assert celery_app.control.cancel_consumer("image_enhancement", reply=True, timeout=5)
    try:
        browser.find_element(By.ID, "submit").click()
        wait.until(lambda d: "ahead" in d.find_element(By.ID, "progress-text").text)  # queue position shown
        task_id = browser.current_url.split("?task=")[1]
        browser.refresh()
        wait.until(lambda d: "PENDING" in d.find_element(By.ID, "progress-text").text)
        browser.find_element(By.ID, "cancel").click()
        wait.until(lambda d: d.find_element(By.ID, "progress-text").text == "Cancelled")
    finally:
        assert celery_app.control.add_consumer("image_enhancement", reply=True, timeout=5)
    assert not browser.find_element(By.ID, "form-error").is_displayed()  # a cancel is not an error
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f"#recent li[data-task='{task_id}'] .badge").text
               == "cancelled")

    browser.get(f"{stack.api_url}/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#recent li[data-task='{task_id}'] a"))
    browser.find_element(By.CSS_SELECTOR, f"#recent li[data-task='{task_id}'] a").click()
    wait.until(lambda d: d.current_url.endswith(f"?task={task_id}"))
    wait.until(lambda d: d.find_element(By.ID, "progress-text").text == "Cancelled")


def test_a_refusal_is_shown_on_the_page(open_browser, stack):
    from selenium.webdriver.common.by import By

    browser = open_browser(375)
    wait = _ready(browser, stack, "image_enhancement")
    browser.execute_script("document.getElementById('image').required = false;")  # let the API judge it
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "form-error").is_displayed())
    error = browser.find_element(By.ID, "form-error").text
    assert "image_enhancement needs an image" in error and "image: No file was submitted." in error
    screenshot(browser, "refused")

    browser.get(f"{stack.api_url}/?task=00000000-0000-0000-0000-000000000000")
    wait.until(lambda d: d.find_element(By.ID, "form-error").is_displayed())
    assert "No task 00000000-0000-0000-0000-000000000000 here" in browser.find_element(By.ID, "form-error").text


def test_noise_from_random_weights_is_called_out(open_browser, stack):
    from selenium.webdriver.common.by import By

    browser = open_browser()
    wait = _ready(browser, stack, "image_generation")
    browser.find_element(By.ID, "prompt").send_keys("a lighthouse at dawn")
    browser.find_element(By.ID, "parameters-summary").click()
    for name, value in (("width", "64"), ("height", "64"), ("num_inference_steps", "2")):
        field = browser.find_element(By.ID, f"param-{name}")
        field.clear()
        field.send_keys(value)
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "result-section").is_displayed())
    assert "random weights" in _visible_text(browser, "noise-note")
    assert not browser.find_element(By.ID, "before-after").is_displayed()  # nothing to compare with
