"""A person approving a device on memesh's verification page, played by a real headless
Chromium (Debian's chromium and chromedriver, driven over WebDriver by selenium; scripts/test
installs them).

usage: browser.py VERIFICATION_URI_COMPLETE API_KEY USER_CODE [SCREENSHOT_PNG]

Opens the link the device showed (the code is filled in), checks the code is there, signs in
with the API key, checks the confirmation names the client, the code and the scopes, optionally
saves a screenshot of it, approves, and checks the page says so. Exits non-zero on any mismatch.
"""

import sys

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def heading_becomes(driver, text: str) -> None:
    """Waits for the next page (a form was submitted) to show the heading `text`."""
    try:
        WebDriverWait(driver, 15, ignored_exceptions=[StaleElementReferenceException]).until(
            lambda d: d.find_element(By.TAG_NAME, "h1").text == text
        )
    except Exception as e:  # noqa: BLE001 - the page is what the failure needs to show
        raise AssertionError(f"expected heading {text!r}; page:\n{driver.page_source}") from e


def main() -> int:
    url, key, code = sys.argv[1], sys.argv[2], sys.argv[3]
    shot = sys.argv[4] if len(sys.argv) > 4 else ""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=720,900",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.get(url)
        field = driver.find_element(By.ID, "user_code")
        assert field.get_attribute("value") == code, field.get_attribute("value")
        driver.find_element(By.ID, "api_key").send_keys(key)
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        heading_becomes(driver, "Approve this device?")
        text = driver.find_element(By.TAG_NAME, "main").text
        for expected in ("memesh-cli", code, "memory:read", "memory:write"):
            assert expected in text, (expected, text)
        if shot:
            driver.save_screenshot(shot)
        driver.find_element(By.CSS_SELECTOR, "button[value=approve]").click()
        heading_becomes(driver, "Device approved")
        print("approved")
        return 0
    finally:
        driver.quit()


if __name__ == "__main__":
    sys.exit(main())
