"""The chat page at /, in a real headless Chromium (Debian's, driven by Playwright) against
a real server. The server's sampler follows scripts for some seeds (tests/scripted_server.py),
so a test can make the real model "say" what it needs: HTML, or a long answer."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from prefix_proxy import PrefixProxy
from server_process import metric, serve, wait_for

MODEL = "SmolLM2-135M-Instruct"
HTML_SEED, LONG_SEED, THINKING_SEED = 101, 102, 103
HTML_ANSWER = 'Here: <img src=x onerror="window.__xss=1"> and <b>bold</b>'
LONG_ANSWER = " ".join(f"word{i}" for i in range(100))  # about 300 tokens
THINKING, THOUGHT_ANSWER = "The user wants a city.", "Paris."
HUNG_S = 120


def chromium_path() -> str:
    path = shutil.which("chromium")
    assert path, "Debian's chromium is missing: make test installs it (apt-get install chromium)"
    return path


@pytest.fixture(scope="module")
def scripts(tmp_path_factory, smollm2_tokenizer):
    end = smollm2_tokenizer.convert_tokens_to_ids("<|im_end|>")
    encode = lambda text: smollm2_tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    path = tmp_path_factory.mktemp("scripts") / "scripts.json"
    path.write_text(json.dumps({HTML_SEED: encode(HTML_ANSWER) + [end], LONG_SEED: encode(LONG_ANSWER) + [end],
                                THINKING_SEED: encode(f"<think>{THINKING}</think>{THOUGHT_ANSWER}") + [end]}))
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory, scripts):
    yield from serve(tmp_path_factory, "webui", "--sampler", "scripted", "--reasoning-parser", "qwen3",
                     env={"SCRIPTS_FILE": str(scripts)}, entry=("tests/scripted_server.py",))


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield browser
        browser.close()


class ChatPage:
    """One browser tab on the chat page, with the console's errors collected."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context(viewport={"width": 1100, "height": 720})
        self.page: Page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.goto(url)

    def ask(self, question: str, seed: int | None = None, max_tokens: int = 400) -> None:
        if seed is not None:
            self.page.fill("#seed", str(seed))
        self.page.fill("#max_tokens", str(max_tokens))
        self.page.fill("#prompt", question)
        self.page.press("#prompt", "Enter")

    def answer_text(self) -> str:
        answers = self.page.locator(".message.assistant .content")
        return answers.last.inner_text() if answers.count() else ""

    def wait_done(self) -> None:
        expect(self.page.locator("#send")).to_be_visible(timeout=HUNG_S * 1000)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def chat(browser, server):
    tab = ChatPage(browser, f"{server.url}/")
    yield tab
    tab.close()


def test_the_page_loads_with_the_model_and_no_console_errors(chat):
    expect(chat.page.locator("#model option")).to_have_text([MODEL])
    expect(chat.page.locator("#status")).to_contain_text("ready", timeout=HUNG_S * 1000)
    expect(chat.page.locator("#status")).to_contain_text(MODEL)
    assert chat.errors == []


def test_an_answer_streams_and_grows(chat):
    chat.ask("Count for me.", seed=LONG_SEED)
    lengths = []
    deadline = time.monotonic() + HUNG_S
    while chat.page.locator("#stop").is_visible() or not lengths:
        lengths.append(len(chat.answer_text()))
        assert time.monotonic() < deadline, "hung"
        time.sleep(0.05)
    chat.wait_done()
    growing = sorted(set(lengths))
    assert len(growing) >= 4, growing  # seen at several lengths while it streamed, not all at once
    assert chat.answer_text().strip() == LONG_ANSWER
    assert chat.errors == []


def test_a_question_gets_the_models_own_answer(chat, tmp_path):
    """No scripted seed: the real model's answer; the page's screenshot in docs/ is this one
    (NANOVLLM_SCREENSHOT_DIR=docs makes the run write it there)."""
    chat.page.fill("#system", "You are a concise assistant.")
    chat.ask("What is the capital of France? Answer in one sentence, then give a Python one-liner that prints it.")
    chat.wait_done()
    assert chat.answer_text() and chat.errors == []
    path = Path(os.environ.get("NANOVLLM_SCREENSHOT_DIR", tmp_path)) / "webui.png"
    chat.page.screenshot(path=path)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_stop_ends_the_answer_and_frees_the_server(chat, server):
    chat.ask("Count for me.", seed=LONG_SEED, max_tokens=1500)
    wait_for(lambda: len(chat.answer_text()) > 30, HUNG_S)
    chat.page.click("#stop")
    chat.wait_done()
    wait_for(lambda: metric(server, "nanovllm_num_requests_running") == 0, HUNG_S)
    stopped_at = chat.answer_text()
    assert 30 < len(stopped_at) < len(LONG_ANSWER)
    time.sleep(1)
    assert chat.answer_text() == stopped_at and chat.errors == []


def test_html_from_the_model_is_shown_as_text(chat):
    chat.ask("Show me HTML.", seed=HTML_SEED)
    chat.wait_done()
    assert chat.answer_text().strip() == HTML_ANSWER
    assert chat.page.locator("#messages img, #messages b").count() == 0
    assert chat.page.evaluate("window.__xss") is None


def test_the_models_thinking_is_shown_folded(chat):
    chat.ask("Which city?", seed=THINKING_SEED)
    chat.wait_done()
    reasoning = chat.page.locator(".message.assistant details.reasoning")
    assert reasoning.get_attribute("open") is None  # folded
    assert reasoning.text_content() == f"Reasoning{THINKING}"
    assert chat.answer_text().strip() == THOUGHT_ANSWER


def test_a_reload_keeps_the_conversation_and_new_chat_starts_another(chat):
    chat.ask("Show me HTML.", seed=HTML_SEED)
    chat.wait_done()
    before = chat.page.locator(".message").all_inner_texts()
    chat.page.reload()
    expect(chat.page.locator(".message")).to_have_count(len(before))
    assert chat.page.locator(".message").all_inner_texts() == before
    chat.page.click("#new-chat")
    expect(chat.page.locator(".message")).to_have_count(0)
    expect(chat.page.locator("#conversations li")).to_have_count(2)


def test_an_error_is_shown_in_the_page(chat):
    chat.ask("Hello", max_tokens=10**6)  # more than the context holds: the server's 400, in the page
    expect(chat.page.locator("#error")).to_contain_text("maximum context length", timeout=HUNG_S * 1000)
    assert all("400" in error for error in chat.errors)  # only the browser's own line for the failed fetch


def test_with_an_api_key_the_page_asks_for_it(browser, tmp_path_factory):
    for keyed in serve(tmp_path_factory, "webui-key", "--api-key", "sk-test-key"):
        tab = ChatPage(browser, f"{keyed.url}/")
        try:
            expect(tab.page.locator("#key-form")).to_be_visible(timeout=HUNG_S * 1000)
            assert "sk-test-key" not in httpx.get(f"{keyed.url}/").text + httpx.get(f"{keyed.url}/webui/app.js").text
            tab.page.fill("#api-key", "sk-test-key")
            tab.page.click("#key-form button")
            expect(tab.page.locator("#model option")).to_have_text([MODEL], timeout=HUNG_S * 1000)
            tab.ask("Say hi.", max_tokens=4)
            tab.wait_done()
            assert tab.answer_text() and tab.page.locator("#error").is_hidden()
        finally:
            tab.close()


def test_the_page_works_behind_a_proxy_at_a_path_prefix(browser, tmp_path_factory):
    for upstream in serve(tmp_path_factory, "webui-prefix", "--root-path", "/llm"):
        with PrefixProxy("/llm", upstream.url) as proxy:
            tab = ChatPage(browser, f"{proxy.url}/llm/")
            try:
                expect(tab.page.locator("#model option")).to_have_text([MODEL], timeout=HUNG_S * 1000)
                expect(tab.page.locator("#status")).to_contain_text("ready", timeout=HUNG_S * 1000)
                tab.ask("Say hi.", max_tokens=6)
                tab.wait_done()
                assert tab.answer_text() and tab.errors == []
            finally:
                tab.close()
            assert "/llm/openapi.json" in httpx.get(f"{proxy.url}/llm/docs").text  # Swagger behind the proxy too


def test_no_webui_leaves_the_root_a_404():
    from fastapi.testclient import TestClient

    from nanovllm_api.app import build_app
    from nanovllm_api.config import ServerConfig

    assert TestClient(build_app(ServerConfig(webui=True))).get("/").headers["content-type"].startswith("text/html")
    assert TestClient(build_app(ServerConfig(webui=False))).get("/").status_code == 404  # built, never started
