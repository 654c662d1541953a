"""The attention page (export/serving/static/), in a real browser: headless Chromium from the
operating system's packages, driven through Selenium (tests/attention_page.py).

The model is the course notes' direction, Chinese -> English (a tiny run on a few pairs that
include the notes' example, 今天吃什么好 -> What should I eat today?), so the axes carry CJK
pieces. The page is served by kerasformer-serve and talks to the REST API as any client does;
a second server on another origin, started with the real server's CORS flag, is reached from it.
"""

import os
from pathlib import Path

import keras
import numpy as np
import pytest
from attention_page import capture, chromium, hover_cell, open_page, translate, wait
from serving_helpers import ServerProcess, http, save_fake_model
from test_train import chinese_english_config

from kerasformer.export.exporter import export_run
from kerasformer.training.train import train

pytestmark = pytest.mark.backend_independent

NOTES = "今天吃什么好"
ZH_EN = [
    (NOTES, "What should I eat today?"), ("我爱你。", "I love you."), ("你好吗？", "How are you?"),
    ("我很好。", "I am fine."), ("他是学生。", "He is a student."), ("谢谢你。", "Thank you."),
    ("今天很好。", "Today is good."), ("我们吃什么？", "What do we eat?"),
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A folder of model folders: zh_en/1 (a tiny Chinese -> English export) and fake/1 (an
    export without the attention signatures)."""
    folder = tmp_path_factory.mktemp("page")
    config = chinese_english_config(folder, ZH_EN, epochs=30)
    keras.utils.set_random_seed(0)
    train(config)
    base = folder / "saved_models"
    export_run(config.run_dir, "zh_en", base_dir=str(base), version=1)
    save_fake_model(base / "fake" / "1")
    return base


@pytest.fixture(scope="module")
def server(models, tmp_path_factory):
    server = ServerProcess(str(tmp_path_factory.mktemp("logs")), str(models), model="zh_en").wait_until_ready(300)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


def predict(server, texts, signature="translate_attention", model="zh_en"):
    status, answer = http("POST", f"{server.url}/v1/models/{model}:predict",
                          {"signature_name": signature, "instances": texts})
    assert status == 200, answer
    return answer["predictions"]


def grid_state(driver):
    return driver.execute_script("""
        const g = document.getElementById('grid');
        const panels = [...g.querySelectorAll('.panel')];
        return {
            dataset: {...g.dataset},
            panels: panels.map(p => ({
                layer: p.dataset.layer, head: p.dataset.head,
                rows: [...p.querySelectorAll('.rows .piece')].map(e => e.textContent),
                columns: [...p.querySelectorAll('.columns .piece')].map(e => e.textContent),
                canvas: [p.querySelector('canvas').dataset.rows, p.querySelector('canvas').dataset.columns],
                size: [p.querySelector('canvas').clientWidth, p.querySelector('canvas').clientHeight],
            })),
            translations: [...document.querySelectorAll('#translations .target')].map(e => e.textContent),
        };""")


def pixel(driver, panel, row, column):
    """The RGBA of the middle of a cell's top edge in a panel's canvas (where a highlight outline is drawn)."""
    return driver.execute_script("""
        const canvas = arguments[0].querySelector('canvas');
        const size = canvas.clientWidth / Number(canvas.dataset.columns), ratio = canvas.width / canvas.clientWidth;
        const x = Math.floor((arguments[2] + 0.5) * size * ratio), y = Math.floor((arguments[1] * size + 1.5) * ratio);
        return [...canvas.getContext('2d').getImageData(x, y, 1, 1).data];""", panel, row, column)


def test_the_page_is_served_with_its_files_and_nothing_else(server):
    status, page = http("GET", server.url + "/kerasformer/attention/")
    assert status == 200 and "<script src=\"attention.js\">" in page
    for name, kind in (("attention.js", "text/javascript"), ("attention.css", "text/css")):
        status, _ = http("GET", server.url + "/kerasformer/attention/" + name)
        assert status == 200, name
    for path in ("/kerasformer/attention/../server.py", "/kerasformer/attention/%2e%2e/server.py",
                 "/kerasformer/attention/nope.js", "/kerasformer/attention/static"):
        assert http("GET", server.url + path)[0] == 404, path
    # No CDN, no framework: the page loads only its own files.
    html = open(os.path.join(os.path.dirname(__file__), "..", "export", "serving", "static", "attention.html")).read()
    assert "http://" not in html and "https://" not in html


def test_translating_draws_a_panel_per_layer_and_head_with_the_pieces_on_the_axes(server, browser):
    open_page(browser, server.url)
    # The model list comes from this server (it served the page); the versions from the status API.
    wait(browser, lambda d: d.execute_script("return document.getElementById('model').value") in ("fake", "zh_en"),
         message="a model name")
    assert translate(browser, NOTES, model="zh_en") == ""
    expected = predict(server, [NOTES])[0]
    state = grid_state(browser)
    layers, heads = len(expected["cross_attention"]), len(expected["cross_attention"][0])
    source = expected["source_pieces"][: expected["source_length"]]
    target = expected["target_pieces"][: expected["target_length"]]
    assert any("\u4e00" <= ch <= "\u9fff" for piece in source for ch in piece), source  # CJK on the axis
    assert state["translations"] == [expected["translation"]]
    assert state["dataset"]["kind"] == "cross_attention"
    assert (int(state["dataset"]["layers"]), int(state["dataset"]["heads"])) == (layers, heads)
    assert len(state["panels"]) == layers * heads
    for panel in state["panels"]:
        assert panel["rows"] == target and panel["columns"] == source
        assert panel["canvas"] == [str(len(target)), str(len(source))]  # one cell per pair of pieces
        assert panel["size"][0] >= 12 * len(source) and panel["size"][1] >= 12 * len(target)  # never squashed

    from selenium.webdriver.common.by import By

    for kind, rows, columns in (("decoder_self_attention", ["[START]", *target[:-1]], ["[START]", *target[:-1]]),
                                ("encoder_self_attention", source, source)):
        browser.find_element(By.CSS_SELECTOR, f"[data-kind={kind}]").click()
        state = grid_state(browser)
        assert state["dataset"]["kind"] == kind and len(state["panels"]) == layers * heads
        assert all(p["rows"] == rows and p["columns"] == columns for p in state["panels"]), kind
    browser.find_element(By.ID, "average").click()
    state = grid_state(browser)
    assert [p["head"] for p in state["panels"]] == ["average"] * layers
    browser.find_element(By.ID, "average").click()
    browser.find_element(By.CSS_SELECTOR, "[data-kind=cross_attention]").click()


def test_hovering_a_cell_highlights_its_row_and_column_in_every_head(server, browser):
    from selenium.webdriver.common.by import By

    open_page(browser, server.url, model="zh_en")
    assert translate(browser, NOTES) == ""
    panels = browser.find_elements(By.CSS_SELECTOR, "#grid .panel")
    row, column = 1, 2
    before = [pixel(browser, panel, row, column) for panel in panels]
    hover_cell(browser, panels[1], row, column)
    wait(browser, lambda d: d.execute_script("return document.getElementById('grid').dataset.highlight") == f"{row},{column}",
         message="the highlight")
    after = [pixel(browser, panel, row, column) for panel in panels]
    assert all(b != a for b, a in zip(before, after)), "the cell is outlined in every head"
    highlighted = browser.execute_script("""return [...document.querySelectorAll('#grid .panel')].map(p =>
        [[...p.querySelectorAll('.rows .piece.highlight')].map(e => e.dataset.index),
         [...p.querySelectorAll('.columns .piece.highlight')].map(e => e.dataset.index)]);""")
    assert highlighted == [[[str(row)], [str(column)]]] * len(panels)
    expected = predict(server, [NOTES])[0]
    value = expected["cross_attention"][0][1][row][column]
    assert f"{value:.3f}" in browser.find_element(By.ID, "hover-info").text
    # Hovering a piece highlights its column in every panel.
    browser.execute_script("arguments[0].dispatchEvent(new MouseEvent('mouseenter'))",
                           panels[0].find_elements(By.CSS_SELECTOR, ".columns .piece")[0])
    assert browser.execute_script("return document.getElementById('grid').dataset.highlight") == ",0"


def test_beam_search_and_a_screenshot(server, browser, tmp_path):
    """The README's Chinese -> English picture is this screenshot (KERASFORMER_SCREENSHOT_DIR: where
    to keep it)."""
    open_page(browser, server.url, model="zh_en")
    assert translate(browser, NOTES + "\n我爱你。", decoding="beam") == ""
    expected = predict(server, [NOTES, "我爱你。"], "translate_beam_attention")
    assert grid_state(browser)["translations"] == [p["translation"] for p in expected]
    path = tmp_path / "page.png"
    try:
        capture(browser, str(path), hover=(0, 0))
    finally:
        browser.set_window_size(1500, 1100)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    if os.environ.get("KERASFORMER_SCREENSHOT_DIR"):
        (Path(os.environ["KERASFORMER_SCREENSHOT_DIR"]) / "attention_page_zh_en.png").write_bytes(path.read_bytes())


@pytest.mark.parametrize("text,model,expected", [
    ("", "zh_en", "Type a sentence"),
    ("\n".join(["我爱你。"] * 40), "zh_en", "At most 32 sentences"),
    (NOTES, "nope", "has no model “nope”"),
    (NOTES, "fake", "has no translate_attention signature"),
])
def test_bad_input_shows_a_readable_message_and_the_page_stays_usable(server, browser, text, model, expected):
    open_page(browser, server.url, model="zh_en")
    message = translate(browser, text, model=model)
    assert expected in message, message
    assert translate(browser, NOTES, model="zh_en") == ""  # not frozen: the next translation works


def test_ten_thousand_characters_are_translated_as_the_model_allows(server, browser):
    open_page(browser, server.url, model="zh_en")
    assert translate(browser, "我爱你" * 3334) == ""
    note = browser.execute_script("const c = document.querySelector('#translations .cut'); return c && c.textContent")
    assert note and "Only the first" in note


def test_a_server_that_is_gone_is_named(server, browser):
    from serving_helpers import free_port

    open_page(browser, server.url, model="zh_en")
    message = translate(browser, NOTES, address=f"http://127.0.0.1:{free_port()}")
    assert "Could not reach the model server" in message


def test_another_origin_works_with_the_real_servers_cors_flag_and_says_why_without(server, models, browser, tmp_path):
    with_cors = ServerProcess(str(tmp_path), str(models), "--rest_api_enable_cors_support", model="zh_en")
    without = ServerProcess(str(tmp_path), str(models), model="zh_en")
    try:
        with_cors.wait_until_ready(300)
        without.wait_until_ready(300)
        open_page(browser, server.url, model="zh_en")
        assert translate(browser, NOTES, address=with_cors.url.replace("127.0.0.1", "localhost")) == ""
        message = translate(browser, NOTES, address=without.url.replace("127.0.0.1", "localhost"))
        assert "--rest_api_enable_cors_support" in message
    finally:
        with_cors.stop()
        without.stop()


def test_the_page_follows_a_dark_system_theme(server):
    driver = chromium(dark=True)
    try:
        open_page(driver, server.url, model="zh_en")
        background = driver.execute_script("return getComputedStyle(document.body).backgroundColor")
        assert translate(driver, NOTES) == ""
    finally:
        driver.quit()
    channels = [int(x) for x in background[background.index("(") + 1: background.index(")")].split(",")[:3]]
    assert max(channels) < 60, background


def test_attention_values_on_the_page_are_the_servers(server, browser):
    """The page draws what the signature returned: the cells' colours follow the weights, cell
    by cell (a larger weight is a brighter cell)."""
    open_page(browser, server.url, model="zh_en")
    assert translate(browser, NOTES) == ""
    expected = np.array(predict(server, [NOTES])[0]["cross_attention"][0][0])
    from selenium.webdriver.common.by import By

    panel = browser.find_elements(By.CSS_SELECTOR, "#grid .panel")[0]
    brightness = browser.execute_script("""
        const canvas = arguments[0].querySelector('canvas'), context = canvas.getContext('2d');
        const rows = Number(canvas.dataset.rows), columns = Number(canvas.dataset.columns);
        const size = canvas.width / columns;
        return Array.from({length: rows}, (_, i) => Array.from({length: columns}, (_, j) => {
            const [r, g, b] = context.getImageData(Math.floor((j + 0.5) * size), Math.floor((i + 0.5) * size), 1, 1).data;
            return r + g + b; }));""", panel)
    brightness = np.array(brightness)
    weights = expected[: brightness.shape[0], : brightness.shape[1]]
    # Brightness (r + g + b) grows along viridis, so a clearly larger weight is never drawn
    # darker, and brightness follows the weights closely. Not argmax per row: a tiny model's
    # weights can be nearly flat (0.204 against 0.204), and 8-bit colours tie or swap those.
    w, b = weights.ravel(), brightness.ravel()
    clearly_larger = (w[:, None] - w[None, :]) > 0.01
    assert clearly_larger.any(), weights  # something to compare
    assert np.all((b[:, None] - b[None, :])[clearly_larger] >= 0), (weights, brightness)
    assert np.corrcoef(w, b)[0, 1] > 0.9, (weights, brightness)


# Holds the page's request for kerasformer-serve's list of models until the test lets it go:
# `fetch` of /kerasformer/stats waits on a promise the test resolves (window.__releaseStats()),
# and window.__statsAsked says the page has asked. Installed before the page's own script runs.
HOLD_THE_MODEL_LIST = """
    window.__statsAsked = false;
    const gate = new Promise((resolve) => { window.__releaseStats = resolve; });
    const realFetch = window.fetch.bind(window);
    window.fetch = async (url, options) => {
        if (String(url).includes('/kerasformer/stats')) { window.__statsAsked = true; await gate; }
        return realFetch(url, options);
    };"""


@pytest.mark.parametrize("opened_with,typed_before,typed_after,expected", [
    ("", None, None, "fake"),        # nothing named: the first served name (sorted) fills the field
    ("zh_en", "", "nope", "nope"),   # named in the address, cleared before the list came, typed after
    ("", "zh_en", None, "zh_en"),    # nothing named, typed while the list was on its way
])
def test_the_list_of_served_models_fills_only_a_field_nobody_has_touched(server, opened_with, typed_before,
                                                                       typed_after, expected):
    """The list of served models answers after the user may have started typing: it suggests
    names and fills a model field that was empty when the page asked, but never one the user
    cleared or typed in meanwhile (the race behind CI of 82f283a: a field cleared just before the
    list came was filled with "fake", and the name typed next was appended: "fakefake"). The
    answer is held until the test lets it go, so the order of events is fixed."""
    from selenium.webdriver.common.by import By

    driver = chromium()
    try:
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": HOLD_THE_MODEL_LIST})
        open_page(driver, server.url, **({"model": opened_with} if opened_with else {}))
        wait(driver, lambda d: d.execute_script("return window.__statsAsked"), 30, "the page asking for the models")
        field = driver.find_element(By.ID, "model")
        if typed_before is not None:
            field.clear()
            field.send_keys(typed_before)
        driver.execute_script("window.__releaseStats()")
        names = wait(driver, lambda d: d.execute_script(
            "return [...document.querySelectorAll('#model-names option')].map(o => o.value)") or None, 30,
            "the list of served models")
        assert names == ["fake", "zh_en"]
        if typed_after is not None:
            field.send_keys(typed_after)
        assert field.get_attribute("value") == expected
    finally:
        driver.quit()
