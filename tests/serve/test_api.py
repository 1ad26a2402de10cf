"""The HTTP API of `archdiff serve` through FastAPI's TestClient over a real Engine on tiny-sd15 (64 px, 2 steps):
what a good request draws, what every bad one gets (a 4xx with one JSON line naming the problem), and the token."""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import zlib

import numpy as np
import pytest
from conftest import make_client
from PIL import Image

from archdiff.serve.settings import Limits

FAST = {"steps": 2, "guidance": 5.0}
TOKEN = "correct-horse-battery"


def draw(client, **body) -> dict:
    response = client.post("/v1/generate", json={"prompt": "brick facade", **FAST, **body})
    assert response.status_code == 200, response.text
    return response.json()


def decoded(payload: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(payload)))
    image.load()
    return image


def pixels(result: dict) -> list[np.ndarray]:
    return [np.asarray(decoded(payload).convert("RGB"), dtype=np.int16) for payload in result["images"]]


def upload(image: Image.Image, kind: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return base64.b64encode(buffer.getvalue()).decode()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height and holds no pixels (as tests/data/test_images.py): a decompression bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def sketch(size: tuple[int, int]) -> Image.Image:
    """A black-on-white drawing: a frame and a diagonal, what the sketch ControlNet follows."""
    from PIL import ImageDraw

    image = Image.new("RGB", size, "white")
    paint = ImageDraw.Draw(image)
    paint.rectangle((4, 4, size[0] - 5, size[1] - 5), outline="black", width=3)
    paint.line((0, 0, size[0], size[1]), fill="black", width=3)
    return image


def bucket(width: int, height: int) -> tuple[int, int]:
    """The bucket `archdiff sample` fits an upload of this shape to at the runs' 64 px, step 16."""
    from archdiff.data.buckets import assign_bucket, make_buckets

    return assign_bucket(width, height, make_buckets(64 * 64, 16, max_aspect=4.0))


# --------------------------------------------------------------------------- must-hold 1: what a good request draws


def test_pngs_carry_the_settings_and_land_in_the_feedback_store(client):
    result = draw(client, prompt="timber house", seed=11, num_images=2, loras=[{"name": "facade", "scale": 0.8}])
    settings = result["settings"]
    assert settings["seeds"] == [11, 12]
    assert (settings["prompt"], settings["steps"], settings["width"], settings["height"]) == ("timber house", 2, 64, 64)
    assert settings["lora"] == ["facade:0.8"]
    for payload, seed in zip(result["images"], [11, 12], strict=True):
        image = decoded(payload)
        assert image.format == "PNG" and image.size == (64, 64)
        chunks = image.text
        assert chunks["prompt"] == "timber house"
        assert json.loads(chunks["seed"]) == seed and json.loads(chunks["steps"]) == 2
        assert json.loads(chunks["lora"]) == ["facade:0.8"]
        assert chunks["parameters"].startswith("timber house\nSteps: 2, CFG scale: 5.0, Seed: ")
        assert f"Seed: {seed}," in chunks["parameters"] and "Lora: facade:0.8" in chunks["parameters"]
    assert len(set(result["ids"])) == 2
    for result_id in result["ids"]:
        assert client.post("/v1/feedback", json={"id": result_id, "rating": "good"}).json() == {"id": result_id, "rating": "good"}
    stored = {result_id: (png, prompt, meta) for result_id, png, prompt, meta in client.store.good()}
    assert sorted(stored) == sorted(result["ids"])
    for result_id, payload, seed in zip(result["ids"], result["images"], [11, 12], strict=True):
        png, prompt, meta = stored[result_id]
        assert png == base64.b64decode(payload) and prompt == "timber house" and meta["seed"] == seed


def test_settings_name_the_loras_as_archdiff_sample_does(client):
    result = draw(client, seed=1, loras=[{"name": "facade", "scale": 0.5}])
    assert result["settings"]["lora"] == ["facade:0.5"]


def test_random_seed_is_returned_and_reproduces(client):
    first = draw(client)
    (seed,) = first["settings"]["seeds"]
    again = draw(client, seed=seed)
    assert np.array_equal(pixels(first)[0], pixels(again)[0])


def test_same_seed_same_image_whatever_ran_between_and_loras_change_the_image(client):
    facade = pixels(draw(client, seed=7, loras=[{"name": "facade", "scale": 1.0}]))[0]
    timber = pixels(draw(client, seed=7, loras=[{"name": "timber", "scale": 0.5}]))[0]
    both = pixels(draw(client, seed=7, loras=[{"name": "facade", "scale": 0.3}, {"name": "timber", "scale": 1.2}]))[0]
    plain = pixels(draw(client, seed=7))[0]
    facade_half = pixels(draw(client, seed=7, loras=[{"name": "facade", "scale": 0.5}]))[0]
    facade_again = pixels(draw(client, seed=7, loras=[{"name": "facade", "scale": 1.0}]))[0]
    plain_again = pixels(draw(client, seed=7))[0]
    assert np.array_equal(facade, facade_again)
    assert np.array_equal(plain, plain_again)  # no LoRA after LoRAs ran: the adapters were turned off
    drawn = {"facade": facade, "timber": timber, "both": both, "plain": plain, "facade_half": facade_half}
    names = list(drawn)
    for i, one in enumerate(names):
        for other in names[i + 1 :]:
            assert np.abs(drawn[one] - drawn[other]).mean() > 0.5, f"{one} and {other} drew the same image"


def test_img2img_takes_the_uploads_bucket_and_follows_it(client):
    wide = Image.new("RGB", (128, 64), (200, 60, 40))
    result = draw(client, seed=3, steps=4, init_image=upload(wide), strength=0.3)
    settings = result["settings"]
    assert (settings["width"], settings["height"]) == bucket(128, 64) and settings["width"] > settings["height"]
    assert settings["init_image"] == "upload" and settings["strength"] == 0.3
    image = decoded(result["images"][0])
    assert image.size == bucket(128, 64)
    assert "Denoising strength: 0.3" in image.text["parameters"]
    other = draw(client, seed=3, steps=4, init_image=upload(Image.new("RGB", (128, 64), (30, 60, 220)), "JPEG"), strength=0.3)
    plain = draw(client, seed=3, steps=4, width=settings["width"], height=settings["height"])
    assert np.abs(pixels(result)[0] - pixels(other)[0]).mean() > 0.5  # the upload steers the drawing
    assert np.abs(pixels(result)[0] - pixels(plain)[0]).mean() > 0.5


def test_img2img_with_no_step_left_is_a_400(client):
    response = client.post("/v1/generate", json={"prompt": "a", "steps": 2, "strength": 0.3, "init_image": A_PNG})
    refused(response, 400, "strength")


def test_control_image_takes_the_uploads_bucket_and_steers_the_image(client):
    tall = sketch((64, 128))
    result = draw(client, seed=5, control_image=upload(tall))
    settings = result["settings"]
    assert (settings["width"], settings["height"]) == bucket(64, 128) and settings["height"] > settings["width"]
    assert settings["controlnet"] == ["sketch"] and settings["control_type"] == ["drawing"]
    assert decoded(result["images"][0]).size == bucket(64, 128)
    named = draw(client, seed=5, control_image=upload(tall), controlnet="sketch", control_scale=1.0)
    assert np.array_equal(pixels(result)[0], pixels(named)[0])
    weaker = draw(client, seed=5, control_image=upload(tall), control_scale=0.0)
    plain = draw(client, seed=5, width=settings["width"], height=settings["height"])
    assert np.abs(pixels(result)[0] - pixels(plain)[0]).mean() > 0.5
    assert np.abs(pixels(weaker)[0] - pixels(plain)[0]).mean() < np.abs(pixels(result)[0] - pixels(plain)[0]).mean()


def test_health_and_loras_list_names_never_paths(client, lora_runs):
    assert client.get("/health").json() == {
        "status": "ok",
        "base": "tiny-sd15",
        "queue": {"waiting": 0, "running": False, "capacity": 4},
    }
    listed = client.get("/v1/loras").json()
    assert [lora["name"] for lora in listed["loras"]] == ["facade", "timber"]
    assert listed["loras"][0] == {"name": "facade", "base": "tiny-sd15", "scale": 1.0, "trigger": None, "resolution": 64}
    assert listed["controlnets"] == [{"name": "sketch", "control_type": "drawing", "scale": 1.0}]
    assert str(lora_runs["facade"].parent) not in json.dumps(listed)


# --------------------------------------------------------------------------- bad requests

BOMB = base64.b64encode(png_header_only(30_000, 30_000)).decode()
GARBAGE = "not*base64!!"
NOT_AN_IMAGE = base64.b64encode(b"hello, this is text and not a picture").decode()
A_PNG = upload(Image.new("RGB", (64, 64), "white"))

BAD_BODIES = {
    "empty prompt": ({"prompt": ""}, 400, "prompt"),
    "blank prompt": ({"prompt": "   "}, 400, "prompt"),
    "long prompt": ({"prompt": "x" * 1001}, 413, "1000"),
    "long negative prompt": ({"prompt": "x", "negative_prompt": "y" * 1001}, 413, "1000"),
    "unknown lora": ({"loras": [{"name": "nope", "scale": 1}]}, 404, "nope"),
    "lora scale": ({"loras": [{"name": "facade", "scale": 9}]}, 400, "scale"),
    "lora twice": ({"loras": [{"name": "facade"}, {"name": "facade"}]}, 400, "twice"),
    "no images": ({"num_images": 0}, 400, "num_images"),
    "nine images": ({"num_images": 9}, 400, "num_images"),
    "no steps": ({"steps": 0}, 400, "steps"),
    "guidance": ({"guidance": 31}, 400, "guidance"),
    "odd width": ({"width": 13}, 400, "width"),
    "too many pixels": ({"width": 2048, "height": 2048}, 413, "pixels"),
    "strength": ({"init_image": A_PNG, "strength": 0}, 400, "strength"),
    "negative seed": ({"seed": -1}, 422, "seed"),
    "extra field": ({"sampler": "euler"}, 422, "sampler"),
    "steps not a number": ({"steps": "many"}, 422, "steps"),
    "prompt not a string": ({"prompt": 5}, 422, "prompt"),
    "loras not a list": ({"loras": "facade"}, 422, "loras"),
    "lora extra field": ({"loras": [{"name": "facade", "path": "/etc"}]}, 422, "path"),
    "base64 garbage": ({"init_image": GARBAGE}, 400, "init_image"),
    "not an image": ({"control_image": NOT_AN_IMAGE}, 400, "control_image"),
    "decompression bomb": ({"init_image": BOMB}, 413, "init_image"),
    "img2img and control": ({"init_image": A_PNG, "control_image": A_PNG}, 400, "init_image and control_image"),
    "controlnet without image": ({"controlnet": "sketch"}, 400, "control_image"),
    "unknown controlnet": ({"control_image": A_PNG, "controlnet": "plans"}, 404, "plans"),
    "control type": ({"control_image": A_PNG, "control_type": "xray"}, 400, "control_type"),
    "control scale": ({"control_image": A_PNG, "control_scale": -1}, 400, "control_scale"),
}


def refused(response, status: int, words: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"] and "\n" not in body["error"], body
    assert words in body["error"], body
    return body["error"]


@pytest.mark.parametrize("case", BAD_BODIES)
def test_bad_generate_request_is_refused_naming_the_problem(client, case):
    body, status, words = BAD_BODIES[case]
    refused(client.post("/v1/generate", json={"prompt": "a house", **FAST} | body), status, words)
    assert client.store.counts() == {"results": 0, "good": 0, "bad": 0}  # nothing drawn, nothing stored


@pytest.mark.parametrize(
    ("content", "words"),
    [(b'{"prompt": "a house", ', "JSON"), (b"[1, 2]", "body"), (b"", "body"), (b'"a house"', "body")],
)
def test_malformed_json_is_422(client, content, words):
    response = client.post("/v1/generate", content=content, headers={"content-type": "application/json"})
    refused(response, 422, words)


def test_body_not_utf8_is_a_json_400(client):
    response = client.post(
        "/v1/generate", content='{"prompt": "caf\xe9"}'.encode("latin-1"), headers={"content-type": "application/json"}
    )
    refused(response, 400, "body")


def test_control_image_without_controlnets_served(bare_engine, tmp_path):
    with make_client(bare_engine, tmp_path / "serve") as client:
        refused(client.post("/v1/generate", json={"prompt": "a", **FAST, "control_image": A_PNG}), 400, "none served")
        refused(client.post("/v1/generate", json={"prompt": "a", **FAST, "control_image": A_PNG, "controlnet": "x"}), 404, "'x'")
        refused(client.post("/v1/generate", json={"prompt": "a", **FAST, "loras": [{"name": "facade"}]}), 404, "none")
        assert draw(client, seed=1)["settings"]["lora"] == []
    client.store.close()


BIG = json.dumps({"prompt": "a house", **FAST, "init_image": "A" * 60_000}).encode()


def test_body_over_the_upload_limit_with_content_length_is_413(engine, tmp_path):
    with make_client(engine, tmp_path / "serve", limits=Limits(upload_bytes=50_000)) as client:
        refused(client.post("/v1/generate", content=BIG, headers={"content-type": "application/json"}), 413, "50000 bytes")
        assert draw(client, seed=1)["ids"] == [1]  # a body under the limit still draws
    client.store.close()


def test_chunked_body_over_the_upload_limit_is_413(engine, tmp_path):
    def chunks():
        for start in range(0, len(BIG), 8192):
            yield BIG[start : start + 8192]

    with make_client(engine, tmp_path / "serve", limits=Limits(upload_bytes=50_000)) as client:
        refused(client.post("/v1/generate", content=chunks(), headers={"content-type": "application/json"}), 413, "50000 bytes")
    client.store.close()


def test_request_past_the_time_limit_is_504_and_the_next_one_draws(engine, tmp_path):
    with make_client(engine, tmp_path / "serve", timeout=0.3) as client:
        started = time.perf_counter()
        refused(client.post("/v1/generate", json={"prompt": "a house", "steps": 100, "num_images": 4}), 504, "0.3 s")
        assert time.perf_counter() - started < 3  # stopped between denoising steps, not after 400 of them
        assert client.get("/health").json()["queue"] == {"waiting": 0, "running": False, "capacity": 4}
        assert client.store.counts()["results"] == 0
    client.store.close()
    with make_client(engine, tmp_path / "serve") as client:
        assert draw(client, seed=1)["ids"] == [1]
    client.store.close()


def test_feedback_errors(client):
    (result_id,) = draw(client, seed=2)["ids"]
    refused(client.post("/v1/feedback", json={"id": result_id + 100, "rating": "good"}), 404, str(result_id + 100))
    refused(client.post("/v1/feedback", json={"id": result_id, "rating": "meh"}), 400, "good or bad")
    refused(client.post("/v1/feedback", json={"id": "first", "rating": "good"}), 422, "id")
    refused(client.post("/v1/feedback", json={"rating": "good"}), 422, "id")
    assert client.post("/v1/feedback", json={"id": result_id, "rating": "bad"}).json() == {"id": result_id, "rating": "bad"}
    assert client.store.counts()["bad"] == 1


def test_unknown_route_and_method_are_json(client):
    refused(client.get("/v1/nothing"), 404, "Not Found")
    refused(client.get("/v1/generate"), 405, "Method Not Allowed")


# --------------------------------------------------------------------------- the token


@pytest.fixture
def guarded(engine, tmp_path):
    with make_client(engine, tmp_path / "serve", token=TOKEN) as client:
        yield client
    client.store.close()


ROUTES = [("get", "/health"), ("get", "/v1/loras"), ("get", "/docs"), ("get", "/openapi.json"), ("post", "/v1/generate"),
          ("post", "/v1/feedback"), ("get", "/v1/nothing")]  # fmt: skip
WRONG = {
    "no header": {},
    "wrong token": {"Authorization": "Bearer not-the-token"},
    "wrong scheme": {"Authorization": f"Basic {TOKEN}"},
    "bare token": {"Authorization": TOKEN},
    "token prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
}


@pytest.mark.parametrize("route", ROUTES, ids=lambda route: route[1])
@pytest.mark.parametrize("headers", WRONG.values(), ids=WRONG)
def test_without_the_right_token_every_route_is_401(guarded, route, headers):
    method, path = route
    response = guarded.request(method.upper(), path, headers=headers, json={"prompt": "a"} if method == "post" else None)
    refused(response, 401, "token")
    assert guarded.store.counts()["results"] == 0


def test_the_right_token_opens_every_route_and_the_page_stays_public(guarded):
    right = {"Authorization": f"Bearer {TOKEN}"}
    assert guarded.get("/health", headers=right).json()["status"] == "ok"
    assert guarded.get("/v1/loras", headers=right).status_code == 200
    assert "swagger" in guarded.get("/docs", headers=right).text.lower()
    result = guarded.post("/v1/generate", headers=right, json={"prompt": "a house", **FAST, "seed": 1})
    assert result.status_code == 200, result.text
    (result_id,) = result.json()["ids"]
    assert guarded.post("/v1/feedback", headers=right, json={"id": result_id, "rating": "good"}).status_code == 200
    page = guarded.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert TOKEN not in page.text
