"""The web studio in a real browser (Debian's Chromium through Playwright) against a real `archdiff serve --token`:
the page asks for the token once, a prompt with a ticked LoRA draws PNGs of the chosen size carrying their settings,
👍/👎 land in the feedback store, and the server's errors show in the page."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "studio-secret-token"
TRIGGER = "arcdf style"
PROMPT = "timber house in the mountains"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _archdiff(*args: str, cwd: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "archdiff", *args], cwd=cwd, env=env, **popen)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory) -> Path:
    """A two-step tiny-sd15 LoRA whose recipe names a trigger word (the page offers to add it to the prompt)."""
    root = tmp_path_factory.mktemp("studio-run")
    args = ["train", "--recipe", "demo-tiny", "--max-steps", "2", "--set", "validation.prompts=[]"]
    train = _archdiff(*args, "--set", f"data.caption.trigger={TRIGGER}", "-o", str(root / "facade"), cwd=root,
                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    output, _ = train.communicate(timeout=300)
    assert train.returncode == 0, output
    return root / "facade"


class Server:
    """`archdiff serve --token TOKEN` with one LoRA on a free loopback port, its feedback store in `folder`."""

    def __init__(self, run: Path, folder: Path):
        self.port, self.folder = _free_port(), folder
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = folder.parent / f"{folder.name}.log"
        args = ["serve", "--base", "tiny-sd15", "--lora", str(run), "--port", str(self.port), "--folder", str(folder)]
        args += ["--token", TOKEN]
        with self.log.open("w") as log:
            self.process = _archdiff(*args, cwd=folder.parent, stdout=log, stderr=subprocess.STDOUT)

    def wait(self, limit: float = 120) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"archdiff serve exited: {self.log.read_text()}"
            try:
                with urllib.request.urlopen(urllib.request.Request(self.url + "health", headers=headers), timeout=2) as answer:
                    if json.load(answer)["status"] == "ok":
                        return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        pytest.fail(f"archdiff serve did not answer /health within {limit} s: {self.log.read_text()}")

    def ratings(self) -> dict[int, str | None]:
        with closing(sqlite3.connect(self.folder / "feedback.sqlite")) as db:
            return dict(db.execute("SELECT id, rating FROM results"))

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="module")
def server(lora_run, tmp_path_factory):
    """One `archdiff serve --token` for the module: the token test starts without the token, the others hold it."""
    root = tmp_path_factory.mktemp("studio-serve")
    started = Server(lora_run, root / "serve")
    try:
        started.wait()
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail(f"the studio's browser test needs Chromium at {CHROMIUM}: apt-get install chromium (CI installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the studio's browser test needs playwright: pip install -e '.[dev]' (no browser download: it uses Chromium)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def open_page(browser):
    """`open_page(token)`: a fresh browser profile holding `token` in localStorage (as if entered before)."""
    contexts, errors = [], []

    def opened(token: str | None):
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        if token:
            context.add_init_script(f"localStorage.setItem('archdiff-token', {json.dumps(token)})")
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda error: errors.append(error))
        return page

    yield opened
    for context in contexts:
        context.close()
    assert not errors, f"the page threw: {errors}"


@pytest.fixture
def page(open_page, server):
    page = open_page(TOKEN)
    page.goto(server.url)
    return page


def _set_range(page, selector: str, value: float) -> None:
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }", value)


def _decode(src: str) -> Image.Image:
    head, _, data = src.partition(",")
    assert head == "data:image/png;base64", head
    image = Image.open(io.BytesIO(base64.b64decode(data)))
    assert image.format == "PNG"
    return image


def test_generate_with_a_lora_then_rate(page, server):
    from playwright.sync_api import expect

    lora = page.locator("#loras .lora[data-name=facade]")
    expect(lora).to_be_visible()
    expect(page.locator("#base")).to_have_text("base model: tiny-sd15")
    assert page.input_value("#width") == page.input_value("#height") == "64"  # the LoRA's training resolution
    expect(lora.locator(".trigger q")).to_have_text(TRIGGER)

    page.fill("#prompt", PROMPT)
    lora.locator(".add-trigger").click()  # adds the trigger and ticks the LoRA
    expect(page.locator("#prompt")).to_have_value(f"{TRIGGER}, {PROMPT}")
    assert lora.locator(".use").is_checked()
    _set_range(page, "#loras .lora[data-name=facade] .scale", 0.8)
    page.select_option("#width", "128")
    page.select_option("#height", "64")
    _set_range(page, "#steps", 2)
    page.uncheck("#seed-random")
    page.fill("#seed", "41")
    page.select_option("#num-images", "2")

    held = []  # the request held back, to see the page while it waits
    page.route("**/v1/generate", lambda route: held.append(route))
    page.click("#generate")
    expect(page.locator("#generate")).to_be_disabled()
    expect(page.locator("#generate")).to_have_class(re.compile(r"\bbusy\b"))
    expect(page.locator("#elapsed")).to_have_text(re.compile(r"^\d+\.\d s$"))
    for _ in range(100):
        if held:
            break
        page.wait_for_timeout(50)
    assert held, "the page sent no POST /v1/generate"
    held[0].continue_()

    cards = page.locator("#gallery .card")
    expect(cards).to_have_count(2, timeout=60_000)
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#message")).to_contain_text("done in")
    for card, seed in zip(cards.all(), (41, 42), strict=True):
        image = _decode(card.locator("img").get_attribute("src"))
        assert image.size == (128, 64)
        assert image.text["prompt"] == f"{TRIGGER}, {PROMPT}"  # the PNG as served, with the settings `sample` writes
        assert json.loads(image.text["seed"]) == seed
        assert card.locator(".download").get_attribute("download") == f"archdiff-{seed}.png"
        assert card.locator(".download").get_attribute("href") == card.locator("img").get_attribute("src")
        facts = card.locator(".facts").inner_text()
        assert f"seed {seed}" in facts and "facade:0.8" in facts and "128×64" in facts

    first = cards.nth(0)
    result_id = int(first.get_attribute("data-id"))
    assert server.ratings()[result_id] is None
    first.locator(".thumb[data-rating=good]").click()
    expect(first.locator(".thumb[data-rating=good]")).to_have_attribute("aria-pressed", "true")
    assert server.ratings()[result_id] == "good"
    first.locator(".thumb[data-rating=bad]").click()
    expect(first.locator(".thumb[data-rating=bad]")).to_have_attribute("aria-pressed", "true")
    expect(first.locator(".thumb[data-rating=good]")).to_have_attribute("aria-pressed", "false")
    assert server.ratings()[result_id] == "bad"


def test_a_dropped_image_is_the_start(page):
    from playwright.sync_api import expect

    photo = io.BytesIO()
    Image.new("RGB", (96, 48), (200, 180, 150)).save(photo, format="PNG")
    expect(page.locator("#loras .lora")).to_have_count(1)
    expect(page.locator("#mode-control-label")).to_be_hidden()  # no ControlNet served: only img2img
    page.fill("#prompt", PROMPT)
    dropped = page.evaluate_handle(
        """(data) => {
            const files = new DataTransfer();
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            files.items.add(new File([bytes], "photo.png", { type: "image/png" }));
            return files;
        }""",
        base64.b64encode(photo.getvalue()).decode(),
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    expect(page.locator("#upload-preview")).to_be_visible()
    assert page.input_value("#width") == page.input_value("#height") == ""  # auto: the server keeps the image's proportions
    _set_range(page, "#steps", 2)
    _set_range(page, "#strength", 0.5)
    page.click("#generate")
    card = page.locator("#gallery .card")
    expect(card).to_have_count(1, timeout=60_000)
    assert "from upload, strength 0.5" in card.locator(".facts").inner_text()
    image = _decode(card.locator("img").get_attribute("src"))
    assert image.text["init_image"] == "upload"
    assert image.width > image.height  # fitted to the 2:1 sketch, not the LoRA's square

    page.click("#upload-clear")
    expect(page.locator("#upload-options")).to_be_hidden()
    assert page.input_value("#width") == "64"


def test_server_errors_show_in_the_page(page):
    from playwright.sync_api import expect

    expect(page.locator("#loras .lora")).to_have_count(1)
    page.click("#generate")  # an empty prompt: the server refuses it
    expect(page.locator("#message")).to_be_visible()
    expect(page.locator("#message")).to_have_text("prompt is empty")
    expect(page.locator("#gallery .card")).to_have_count(0)

    busy = {"status": 503, "headers": {"Retry-After": "7"}, "json": {"error": "the server is busy (7 s estimated); retry later"}}
    page.route("**/v1/generate", lambda route: route.fulfill(**busy))
    page.fill("#prompt", PROMPT)
    page.click("#generate")
    expect(page.locator("#message")).to_have_text("server busy, retry in 7 s")
    expect(page.locator("#generate")).to_be_enabled()


def test_token_is_asked_once_then_sent(open_page, server):
    from playwright.sync_api import expect

    page = open_page(None)
    page.goto(server.url)
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#token-note")).to_be_hidden()
    expect(page.locator("#loras .lora")).to_have_count(0)

    page.fill("#token", "wrong-token-123")
    page.click("#token-form button")
    expect(page.locator("#token-note")).to_contain_text("not accepted")
    expect(page.locator("#token-form")).to_be_visible()

    page.fill("#token", TOKEN)
    page.click("#token-form button")
    expect(page.locator("#loras .lora")).to_have_count(1)
    expect(page.locator("#token-form")).to_be_hidden()
    page.fill("#prompt", PROMPT)
    _set_range(page, "#steps", 2)
    page.click("#generate")
    expect(page.locator("#gallery .card")).to_have_count(1, timeout=60_000)
    assert _decode(page.locator("#gallery img").get_attribute("src")).size == (64, 64)

    page.reload()  # kept in localStorage: not asked again
    expect(page.locator("#loras .lora")).to_have_count(1)
    expect(page.locator("#token-form")).to_be_hidden()


def test_follow_lines_mode_sends_the_controlnet(open_page, server, tmp_path):
    """The ControlNet mode, against a /v1/loras that lists one (the module's server serves none): what the page sends."""
    from playwright.sync_api import expect

    sketch = tmp_path / "sketch.png"
    Image.new("L", (64, 64), 255).save(sketch)
    served = {"loras": [], "controlnets": [{"name": "sketchnet", "control_type": "lines", "scale": 0.7}]}
    sent = []
    page = open_page(TOKEN)
    page.route("**/v1/loras", lambda route: route.fulfill(json=served))
    refusal = {"status": 404, "json": {"error": "no ControlNet named 'sketchnet' here"}}
    page.route("**/v1/generate", lambda route: (sent.append(route.request.post_data_json), route.fulfill(**refusal)))
    page.goto(server.url)
    expect(page.locator("#no-loras")).to_be_visible()
    page.fill("#prompt", PROMPT)
    page.set_input_files("#upload", str(sketch))
    page.check("#mode-control")
    expect(page.locator("#img2img-options")).to_be_hidden()
    expect(page.locator("#controlnet")).to_have_value("sketchnet")
    expect(page.locator("#control-scale-value")).to_have_text("0.70")  # the ControlNet's own default
    page.click("#generate")
    expect(page.locator("#message")).to_have_text("no ControlNet named 'sketchnet' here")
    (body,) = sent
    assert body["control_image"].startswith("data:image/png;base64,") and "init_image" not in body
    assert (body["controlnet"], body["control_scale"], body["loras"]) == ("sketchnet", 0.7, [])
