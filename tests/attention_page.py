"""Drives the attention page (export/serving/static/) in headless Chromium, the operating
system's package (`apt-get install chromium chromium-driver`; tests/run.sh installs them),
through Selenium and the chromedriver of the same package.

Used by tests/test_attention_page.py and, as a command, to take the README's picture:

    python tests/attention_page.py saved_models --model kerasformer_en_es \\
        --text "In the beginning, God created the heavens and the earth." --out PATH.png

(starts kerasformer-serve on the folder, opens the page, translates, hovers one cell, saves
a screenshot of the page).
"""

import argparse
import os
import shutil
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PAGE = "/kerasformer/attention/"


def find_chromium():
    """(chromium, chromedriver) paths; a clear error naming the packages when one is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        raise RuntimeError("headless Chromium is needed: apt-get install chromium chromium-driver "
                           "fonts-wqy-zenhei (tests/run.sh installs them when it runs as root)")
    return chromium, driver


def chromium(width=1500, height=1100, dark=False):
    """A headless Chromium driven by Selenium; `dark` emulates prefers-color-scheme: dark."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = find_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},{height}", "--force-color-profile=srgb", "--lang=en-US",
                     "--hide-scrollbars"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    if dark:
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia",
                               {"features": [{"name": "prefers-color-scheme", "value": "dark"}]})
    return driver


def wait(driver, condition, timeout=120, message="condition"):
    """Polls `condition(driver)` until truthy; the page's message box is in the error."""
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition)
    except Exception as error:  # noqa: BLE001  (a timeout: say what the page showed)
        shown = driver.execute_script("const m = document.getElementById('message'); return m && !m.hidden ? m.textContent : ''")
        raise AssertionError(f"waiting for {message}: {type(error).__name__}; page message: {shown!r}") from None


def open_page(driver, server_url, **query):
    from urllib.parse import urlencode

    driver.get(server_url + PAGE + ("?" + urlencode(query) if query else ""))
    wait(driver, lambda d: d.execute_script("return document.readyState") == "complete", message="the page")


def translate(driver, text, decoding="greedy", model=None, address=None):
    """Types `text`, picks the decoding, presses Translate; returns when the grid is drawn or a
    message shows. Returns the message's text ('' when the grid was drawn)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    if address is not None:
        field = driver.find_element(By.ID, "address")
        field.clear()
        field.send_keys(address)
    if model is not None:
        field = driver.find_element(By.ID, "model")
        field.clear()
        field.send_keys(model)
    box = driver.find_element(By.ID, "text")
    box.clear()
    if len(text) <= 200:
        box.send_keys(text)  # typed, key by key
    else:  # send_keys is slow for long texts: set the value
        driver.execute_script("arguments[0].value = arguments[1];", box, text)
    Select(driver.find_element(By.ID, "decoding")).select_by_value(decoding)
    driver.execute_script("document.getElementById('grid').dataset.rows = ''; "
                          "document.getElementById('message').hidden = true;")
    driver.find_element(By.ID, "translate").click()
    state = """const m = document.getElementById('message'), g = document.getElementById('grid'),
                     b = document.getElementById('translate');
               return b.disabled ? null : (!m.hidden ? 'message' : (g.dataset.rows ? 'grid' : null));"""
    outcome = wait(driver, lambda d: d.execute_script(state), message="a translation or a message")
    return driver.find_element(By.ID, "message").text if outcome == "message" else ""


def hover_cell(driver, panel, row, column):
    """Moves the mouse over cell (row, column) of a panel element."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = panel.find_element(By.TAG_NAME, "canvas")
    size = canvas.size["width"] / int(canvas.get_attribute("data-columns"))
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', inline: 'center'});", canvas)
    ActionChains(driver).move_to_element_with_offset(
        canvas, int((column + 0.5) * size - canvas.size["width"] / 2), int((row + 0.5) * size - canvas.size["height"] / 2)
    ).perform()


def capture(driver, out, hover=(1, 1), width=1500, panel=1):
    """A screenshot of the whole page in a window as wide as the grid (every head in view), with
    cell `hover` of the `panel`-th panel hovered (its row and column highlighted in every head)."""
    from selenium.webdriver.common.by import By

    grid_width = driver.execute_script("return document.getElementById('grid').scrollWidth")
    width = max(width, min(grid_width + 120, 2600))
    driver.execute_script("document.getElementById('grid').style.maxHeight = 'none'")
    driver.set_window_size(width, 1000)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(width, min(height + 40, 5000))
    time.sleep(0.3)
    panels = driver.find_elements(By.CSS_SELECTOR, "#grid .panel")
    hover_cell(driver, panels[min(panel, len(panels) - 1)], *hover)
    driver.execute_script("window.scrollTo(0, 0)")
    time.sleep(0.3)
    driver.save_screenshot(out)
    return out


def screenshot(base_path, model, text, out, decoding="greedy", hover=(1, 1), width=1500, height=1100, dark=False,
               kind="cross_attention"):
    """Serves `base_path` with kerasformer-serve, translates `text` on the page and writes a PNG."""
    sys.path.insert(0, HERE)
    from selenium.webdriver.common.by import By
    from serving_helpers import ServerProcess

    with tempfile.TemporaryDirectory() as folder:
        server = ServerProcess(folder, os.path.abspath(base_path), model=model).wait_until_ready(timeout=300)
        driver = chromium(width, height, dark)
        try:
            open_page(driver, server.url, model=model)
            message = translate(driver, text, decoding, model=model)
            if message:
                raise RuntimeError(message)
            driver.find_element(By.CSS_SELECTOR, f"[data-kind={kind}]").click()
            capture(driver, out, hover, width)
        finally:
            driver.quit()
            server.stop()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base_path", help="a folder of model folders (NAME/VERSION/)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--text", required=True)
    parser.add_argument("--decoding", default="greedy", choices=["greedy", "beam"])
    parser.add_argument("--hover", default="1,1", help="row,column of the cell to hover")
    parser.add_argument("--dark", action="store_true")
    parser.add_argument("--kind", default="cross_attention",
                        choices=["cross_attention", "decoder_self_attention", "encoder_self_attention"])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    hover = tuple(int(x) for x in args.hover.split(","))
    print(screenshot(args.base_path, args.model, args.text, args.out, args.decoding, hover, dark=args.dark,
                     kind=args.kind))


if __name__ == "__main__":
    main()
