"""The web page in a real headless Chromium against the real stack: submit, watch the bar fill, see the result."""

import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver

    assert CHROMIUM and CHROMEDRIVER, "Debian's chromium and chromium-driver are needed (.ci/run installs them)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1100,1600", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def test_submit_background_removal_and_see_the_result(browser, stack, tmp_path, astronaut_png):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    image = tmp_path / "astronaut.png"
    image.write_bytes(astronaut_png)
    browser.get(f"{stack.api_url}/")
    wait = WebDriverWait(browser, 120, poll_frequency=0.2)
    wait.until(lambda d: len(Select(d.find_element(By.ID, "task_type")).options) >= 1)
    Select(browser.find_element(By.ID, "task_type")).select_by_value("background_removal")
    browser.find_element(By.ID, "image").send_keys(str(image))
    browser.find_element(By.ID, "submit").click()

    wait.until(lambda d: d.find_element(By.ID, "progress").get_attribute("value") == "100")
    wait.until(lambda d: d.execute_script(
        "const img = document.getElementById('result-image'); return img.complete && img.naturalWidth;") == 512)
    assert "SUCCESS" in browser.find_element(By.ID, "progress-text").text
    assert '"model": "u2netp"' in browser.find_element(By.ID, "result-metadata").text
    assert len(browser.find_elements(By.CSS_SELECTOR, "#recent li")) >= 1
    assert not browser.find_element(By.ID, "form-error").is_displayed()
    browser.save_screenshot(str(Path(stack.log_dir) / "web-page.png"))


def test_a_refusal_is_shown_on_the_page(browser, stack):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser.get(f"{stack.api_url}/")
    wait = WebDriverWait(browser, 30, poll_frequency=0.2)
    wait.until(lambda d: len(Select(d.find_element(By.ID, "task_type")).options) >= 1)
    Select(browser.find_element(By.ID, "task_type")).select_by_value("image_enhancement")
    browser.execute_script("document.getElementById('image').required = false;")  # let the API judge it
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.find_element(By.ID, "form-error").is_displayed())
    assert "needs an image" in browser.find_element(By.ID, "form-error").text
