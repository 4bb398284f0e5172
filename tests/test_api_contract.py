"""The HTTP contract: the served OpenAPI document, a fuzzer that holds the server to it, and the
documentation page in a real browser with no network beyond 127.0.0.1."""

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import requests
from openapi_spec_validator import validate

from conftest import SERVE_LIMITS, SERVE_URL as URL, confine, offline_browser, png_bytes, wav_bytes
from onestep.serving.contract import generation_form
from onestep.serving.validation import FILES, PARAMETERS, Limits

FORM_FIELDS = {"image", "audio", "steps", "seed", "audio_scale", "ref_scale", "fps",
               "resolution"}


def test_the_form_schema_has_exactly_the_fields_validation_takes():
    model = {"steps": 2, "seed": 0, "audio_scale": 2.0, "ref_scale": 1.0, "fps": 25,
             "resolution": 32}
    form = generation_form(Limits(max_steps=7), model)["content"]["multipart/form-data"]
    assert set(form["schema"]["properties"]) == {*FILES, *PARAMETERS} == FORM_FIELDS
    assert form["schema"]["properties"]["steps"]["maximum"] == 7


def _schema() -> dict:
    r = requests.get(f"{URL}/openapi.json", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_schema_is_openapi_3_1_and_says_what_the_server_enforces(endpoint):
    schema = _schema()
    validate(schema)  # raises on any violation of the OpenAPI 3.1 meta-schema
    assert schema["openapi"].startswith("3.1") and schema["info"]["version"] == version("onestep")
    model = requests.get(f"{URL}/v1/models", timeout=10).json()["models"][0]
    for path, media_type in {"/v1/generate": "video/mp4",
                             "/v1/generate/stream": "video/mp2t"}.items():
        op = schema["paths"][path]["post"]
        form = op["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert set(form["properties"]) == FORM_FIELDS and set(form["required"]) == {"image",
                                                                                   "audio"}
        assert form["additionalProperties"] is False
        props = form["properties"]
        assert props["image"]["format"] == "binary" and props["audio"]["format"] == "binary"
        assert f"{SERVE_LIMITS['max_image_mb']:g} MB" in props["image"]["description"]
        assert f"{SERVE_LIMITS['max_audio_seconds']:g} s" in props["audio"]["description"]
        assert props["steps"]["maximum"] == 50 and props["steps"]["default"] == model["steps"]
        assert props["resolution"]["multipleOf"] == 2
        assert props["resolution"]["default"] == model["resolution"]
        assert set(op["responses"]["200"]["content"]) == {media_type}
        assert {"400", "413", "415", "422", "429", "500"} <= set(op["responses"])
        assert "401" not in op["responses"] and "security" not in op  # no token on this server
        error = op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
        assert error == "#/components/schemas/ErrorBody"
    session = schema["paths"]["/v1/sessions"]["post"]
    form = session["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == {"image", "steps", "seed", "audio_scale", "ref_scale",
                                       "sample_rate", "audio_format"}
    assert form["required"] == ["image"] and 48000 in form["properties"]["sample_rate"]["enum"]
    assert form["properties"]["audio_format"]["enum"] == ["pcm16", "webm"]
    assert "Retry-After" in session["responses"]["429"]["headers"]
    models = schema["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]
    assert models["application/json"]["schema"]["$ref"] == "#/components/schemas/ModelsResponse"
    assert set(schema["components"]["schemas"]["ModelInfo"]["properties"]) == set(model)


def test_error_bodies_match_the_declared_error_model(endpoint):
    r = requests.post(f"{URL}/v1/generate", files={"audio": ("a.wav", b"RIFF")}, timeout=30)
    assert r.status_code == 422
    declared = _schema()["components"]["schemas"]["ErrorBody"]
    assert set(r.json()) == set(declared["properties"]) == {"error", "request_id"}
    assert r.json()["request_id"] == r.headers["x-request-id"]


def test_a_fuzzer_finds_no_server_error_and_no_answer_outside_the_schema(endpoint, tmp_path):
    """Schemathesis (its CLI, as a user would run it) against the live server: a fixed seed and
    a bounded number of cases, positive and negative. The checks: no 5xx, only declared status
    codes, content types, headers and bodies, and schema-violating requests refused."""
    checks = ("not_a_server_error,status_code_conformance,content_type_conformance,"
              "response_headers_conformance,response_schema_conformance,negative_data_rejection")
    st = Path(sys.executable).parent / "st"
    tests = Path(__file__).parent
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "fuzz_hooks",
           "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [str(st), "run", f"{URL}/openapi.json", "--checks", checks, "--seed", "0",
         "--max-examples", "25", "--workers", "2", "--request-timeout", "60",
         "--generation-database", "none", "--no-color",
         "--report", "json", "--report-json-path", str(tmp_path / "report.json")],
        capture_output=True, text=True, timeout=900, cwd=tmp_path, env=env)
    summary = proc.stdout[-4000:]
    assert proc.returncode == 0, summary + proc.stderr[-2000:]
    report = json.loads((tmp_path / "report.json").read_text())
    print(summary)  # pytest -s shows the summary (cases, operations, checks)
    assert report, "schemathesis wrote an empty report"


def test_docs_work_offline_and_try_it_out_plays_the_video(endpoint, tmp_path):
    """Swagger UI in Debian's Chromium (driven by Playwright, no browser download) with no way
    out but 127.0.0.1: every other host resolves to nowhere, any other connection goes to a
    dead proxy, and the page is told to abort and record any request elsewhere. The page must
    render both generate operations with every form field, then "Try it out" on
    /v1/generate must upload a portrait and speech and show the answer as a playable video."""
    from playwright.sync_api import expect, sync_playwright

    (tmp_path / "face.png").write_bytes(png_bytes((64, 64)))
    (tmp_path / "speech.wav").write_bytes(wav_bytes(1.0))
    outside = []
    with sync_playwright() as pw:
        browser = offline_browser(pw)
        try:
            page = browser.new_page()
            confine(page, outside)
            page.goto(f"{URL}/docs")
            for op in ("generate_v1_generate_post", "generate_stream_v1_generate_stream_post"):
                block = page.locator(f"#operations-default-{op}")
                block.wait_for(timeout=30_000)
                # Swagger renders an operation's block before its body rows: wait for each row
                for field in sorted(FORM_FIELDS):
                    expect(block.locator(f'tr[data-property-name="{field}"]'),
                           f"no {field} row").to_have_count(1, timeout=30_000)
            block = page.locator("#operations-default-generate_v1_generate_post")
            block.get_by_role("button", name="Try it out").click()
            block.locator('tr[data-property-name="image"] input[type=file]').set_input_files(
                str(tmp_path / "face.png"))
            block.locator('tr[data-property-name="audio"] input[type=file]').set_input_files(
                str(tmp_path / "speech.wav"))
            block.get_by_role("button", name="Execute").click()
            video = block.locator("video.onestep-video")
            video.wait_for(timeout=120_000)
            duration = video.evaluate("""v => new Promise(done => {
                if (v.readyState >= 1) return done(v.duration);
                v.onloadedmetadata = () => done(v.duration); v.onerror = () => done(-1); })""")
        finally:
            browser.close()
    assert outside == [], f"the page tried to load from outside: {outside}"
    assert abs(duration - 1.0) < 0.1, f"the video did not load in the page ({duration} s)"


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_doc_pages_reference_only_local_assets(endpoint, page):
    html = requests.get(f"{URL}{page}", timeout=10).text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css") if page == "/docs" else (
            "redoc.standalone.js",):
        assert f"/docs-assets/{asset}" in html
        r = requests.get(f"{URL}/docs-assets/{asset}", timeout=10)
        assert r.status_code == 200 and len(r.content) > 10_000
