"""The demo page (``python -m unmask_jax.demo``), served on a free port of 127.0.0.1 and used
as a user would: through Gradio's client and through a real browser (headless Chromium
driven by Playwright).

The photo is a procedural face (``data_pipelines.sources.synthetic``) wearing a surgical
mask painted by the project's mask synthesis (``data_pipelines.masks``), on a textured
canvas; dlib (the starter weights' detector) finds it. The page serves two models: the
starter weights (GANMasker two-stage) and a tiny pix2pix run whose generator also takes an
identity photo (as UnVeilify does), saved here without training.

Gradio, gradio_client, Playwright and Debian's Chromium (``/usr/bin/chromium``) are required:
a missing one fails these tests, it does not skip them.
"""
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from io import BytesIO
from urllib.parse import urlparse

import cv2
import numpy as np
import pytest
from PIL import Image

import gradio  # noqa: F401  (required: an ImportError fails the module)
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError

from data_pipelines import masks
from data_pipelines.sources.synthetic.render import render_face
from tests.test_predict import STARTER, _canvas, _save_run
from tests.test_train import REPO, tiny_config
from unmask_jax.demo import app, models as demo_models
from unmask_jax.predict import io

CHROMIUM = "/usr/bin/chromium"
#: As root Chromium needs --no-sandbox; without the background-networking switches it keeps
#: calling Google's services, which the closed network refuses.
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
MAX_PIXELS = 4_000_000
LOCAL_HOSTS = ("127.0.0.1", "localhost")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _masked_photo(path) -> np.ndarray:
    """A 300x320 PNG: a drawn face wearing a synthesised surgical mask; returns it."""
    face, lm = render_face(0, 7, 7, 200)
    masked, _, _ = masks.synthesize_mask(face, lm, masks.example_rng(2, 0),
                                         masks.MaskSynthesisConfig())
    img = _canvas(320, 300, 21)
    img[60:260, 50:250] = masked
    Image.fromarray(img).save(path)
    return img


def _identity_config():
    """A tiny pix2pix whose generator takes the masked face and an identity photo."""
    return tiny_config(**{"model.generator_inputs": ("masked", "identity"),
                          "data.identity_image": True})


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """(models, page URL, a folder with the photos) of a page served for this module."""
    root = tmp_path_factory.mktemp("demo")
    run = root / "identity_run"
    _save_run(_identity_config(), str(run))
    loaded = demo_models.load_models([STARTER], [str(run)], _identity_config(), MAX_PIXELS)
    blocks = app.build(loaded)
    _, url, _ = app.launch(blocks, port=_free_port(), block=False)
    photos = root / "photos"
    photos.mkdir()
    _masked_photo(photos / "masked.png")
    yield loaded, url, photos
    blocks.close()


@pytest.fixture(scope="module")
def client(demo):
    return Client(demo[1], verbose=False)


def _unmask(client, label, photo, identity=None, editor=None, mask_file=None):
    def f(p):
        return handle_file(str(p)) if p else None
    return client.predict(label, f(photo), f(identity), editor, f(mask_file),
                          api_name="/unmask")


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a.astype(int) != b.astype(int)).any(axis=-1)


def _map_in_photo(tile: np.ndarray, box: dict, shape) -> np.ndarray:
    """A face's map (crop pixels) placed in the photo at its box (``face_records``)."""
    side = box["side"]
    big = cv2.resize(tile.astype(np.uint8), (side, side), interpolation=cv2.INTER_NEAREST)
    out = np.zeros(shape, bool)
    y0, x0 = box["y"], box["x"]
    ys, xs = slice(max(y0, 0), min(y0 + side, shape[0])), slice(max(x0, 0),
                                                               min(x0 + side, shape[1]))
    out[ys, xs] = big[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] > 0
    return out


def test_a_masked_photo_comes_back_full_size_with_only_the_map_changed(demo, client,
                                                                        tmp_path):
    """The endpoint gives the slider pair, three tiles per face, predict's report record
    and the PNG; the PNG is what ``--mode=predict`` writes for the same file."""
    loaded, _, photos = demo
    src = np.asarray(Image.open(photos / "masked.png"))
    t0 = time.perf_counter()
    (before, after), tiles, record, download = _unmask(client, loaded[0].label,
                                                       photos / "masked.png")
    print(f"first photo through the page: {time.perf_counter() - t0:.1f} s")
    out = np.asarray(Image.open(download))
    assert os.path.basename(download) == "masked_unmasked.png"
    assert out.shape == src.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(Image.open(before)), src)
    np.testing.assert_array_equal(np.asarray(Image.open(after)), out)  # PNG: lossless
    assert record["status"] == "ok" and record["faces"] == 1 and record["size"] == [300, 320]
    assert record["input"] == "masked.png" and record["output"] == "masked_unmasked.png"
    (face,) = record["face_records"]
    assert 0.05 < face["mask_fraction"] < 0.6
    assert "maps: segmenter:sha256:" in face["weights"]
    assert [t["caption"] for t in tiles] == ["face 1: masked crop",
                                             "face 1: map (white = replaced)",
                                             "face 1: unmasked"]
    assert all(np.asarray(Image.open(t["image"])).shape == (128, 128, 3) for t in tiles)
    # Pixels away from the map (the gallery's, placed back in the photo and grown by the
    # paste's dilation and feather) are the input's, bit for bit.
    changed = _changed(out, src)
    in_photo = _map_in_photo(np.asarray(Image.open(tiles[1]["image"]))[..., 0] > 127,
                             face["box"], src.shape[:2])
    near = cv2.dilate(in_photo.astype(np.uint8), np.ones((41, 41), np.uint8)) > 0
    assert changed.sum() > 1000 and not changed[~near].any()
    assert changed[in_photo].mean() > 0.5
    # The same photo through the file runner: the same pixels and the same face record.
    report = loaded[0].predictor.run(str(photos), str(tmp_path / "out"))
    (entry,) = report["files"]
    np.testing.assert_array_equal(np.asarray(Image.open(entry["output"])), out)
    assert entry["face_records"] == record["face_records"]
    assert set(entry) - {"seconds", "stages"} == set(record) - {"seconds", "stages"}


def test_a_mask_drawn_or_uploaded_replaces_the_predicted_map(demo, client, tmp_path):
    """A rectangle over the lower face, once painted in the brush editor (an RGBA layer) and
    once as a mask image: both give the same result, changed only near the rectangle."""
    loaded, _, photos = demo
    src = np.asarray(Image.open(photos / "masked.png"))
    rect = np.zeros(src.shape[:2], bool)
    rect[190:240, 110:190] = True
    Image.fromarray(rect.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    layer = np.zeros(src.shape[:2] + (4,), np.uint8)
    layer[rect] = (255, 0, 0, 255)
    Image.fromarray(layer).save(tmp_path / "layer.png")
    editor = {"background": None, "layers": [handle_file(str(tmp_path / "layer.png"))],
              "composite": None}
    _, _, painted_record, painted = _unmask(client, loaded[0].label, photos / "masked.png",
                                            editor=editor)
    _, _, uploaded_record, uploaded = _unmask(client, loaded[0].label, photos / "masked.png",
                                              mask_file=tmp_path / "mask.png")
    out = np.asarray(Image.open(uploaded))
    np.testing.assert_array_equal(np.asarray(Image.open(painted)), out)
    assert uploaded_record["face_records"] == painted_record["face_records"]
    (face,) = uploaded_record["face_records"]
    assert "maps:" not in face["weights"]  # the user's map: no stage 1
    changed = _changed(out, src)
    near = np.zeros_like(rect)
    near[190 - 20:240 + 20, 110 - 20:190 + 20] = True  # the paste's dilation and feather
    assert changed[rect].mean() > 0.5 and not changed[~near].any()
    # A mask of another size is a message.
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "small_mask.png")
    with pytest.raises(AppError, match="draw the mask at the image's size"):
        _unmask(client, loaded[0].label, photos / "masked.png",
                mask_file=tmp_path / "small_mask.png")


def test_mistakes_are_plain_messages(demo, client, tmp_path):
    """Not an image, no face, too many pixels, no photo: a sentence, never a traceback."""
    loaded, _, _ = demo
    (tmp_path / "notes.png").write_text("not an image")
    Image.fromarray(np.full((200, 240, 3), 120, np.uint8)).save(tmp_path / "wall.png")
    Image.new("RGB", (2001, 2000)).save(tmp_path / "huge.png")  # over MAX_PIXELS, 20 kB
    cases = {"notes.png": "not an image", "wall.png": "No face was found",
             "huge.png": "too large"}
    for name, message in cases.items():
        with pytest.raises(AppError) as err:
            _unmask(client, loaded[0].label, tmp_path / name)
        assert message in str(err.value) and "Traceback" not in str(err.value), name
    with pytest.raises(AppError, match="Upload a photo"):
        _unmask(client, loaded[0].label, None)


def test_the_identity_photo_is_asked_for_only_by_models_that_take_one(demo, client):
    """The identity input is hidden for the starter weights and shown for the run whose
    generator takes an identity photo; that model unmasks with one and asks without."""
    loaded, url, photos = demo
    starter, identity_run = loaded
    assert not starter.needs_identity and identity_run.needs_identity
    config = json.load(urllib.request.urlopen(url + "config"))
    (component,) = [c for c in config["components"]
                    if c.get("props", {}).get("elem_id") == "identity"]
    assert component["props"]["visible"] is False
    with pytest.raises(AppError, match="needs an identity photo"):
        _unmask(client, identity_run.label, photos / "masked.png")
    _, tiles, record, download = _unmask(client, identity_run.label, photos / "masked.png",
                                         identity=photos / "masked.png")
    assert record["status"] == "ok" and len(tiles) == 3
    assert np.asarray(Image.open(download)).shape == (320, 300, 3)


def test_the_page_fetches_nothing_from_other_hosts(demo):
    """No web fonts or other assets from the internet: the theme uses the system's fonts
    and the HTML's links, scripts and the CSS point only at this server."""
    url = demo[1]
    page = urllib.request.urlopen(url).read().decode()
    config = json.load(urllib.request.urlopen(url + "config"))
    assert config["stylesheets"] == []
    assert "fonts.googleapis" not in page and "fonts.gstatic" not in page
    sources = re.findall(r'<(?:link|script|img)[^>]*(?:href|src)="([^"]+)"', page)
    assert sources and all(not urlparse(s).netloc or urlparse(s).hostname in LOCAL_HOSTS
                           for s in sources), sources
    css = [urllib.request.urlopen(url + "theme.css").read().decode()]
    css += [urllib.request.urlopen(url + s.lstrip("./")).read().decode()
            for s in sources if s.endswith(".css")]
    for text in css:
        assert not re.search(r"(url\(\s*['\"]?|@import\s+['\"]?)https?://", text)
    assert "system-ui" in css[0]


def test_result_png_keeps_the_photo_layout():
    """The download keeps gray, alpha and 16 bits (PNG holds them); CMYK becomes RGB."""
    for kind, native in (("gray", np.full((4, 5, 1), 7, np.uint8)),
                         ("rgba", np.full((4, 5, 4), 9, np.uint8)),
                         ("gray", np.full((4, 5, 1), 40000, np.uint16)),
                         ("cmyk", np.full((4, 5, 4), 30, np.uint8))):
        decoded = io.Decoded(native=native, kind=kind, format="JPEG", orientation=6)
        im = Image.open(BytesIO(app.result_png(decoded, native)))
        assert im.format == "PNG" and im.size == (5, 4)
        want = {"gray": ("L", "I;16"), "rgba": ("RGBA",), "cmyk": ("RGB",)}[kind]
        assert im.mode in want + ("I",), (kind, im.mode)
        if kind != "cmyk":
            np.testing.assert_array_equal(np.asarray(im).reshape(native.shape), native)


def test_strokes_on_the_smaller_editor_copy_cover_the_photo():
    """The brush editor shows large photos smaller: its strokes are scaled to the photo."""
    strokes = np.zeros((50, 40), bool)
    strokes[10:20, 5:15] = True
    mask = app.brush_mask([strokes], (100, 80))
    assert mask.shape == (100, 80) and mask[20:40, 10:30].all() and mask.sum() == 400
    assert app.brush_mask([np.zeros((50, 40), bool)], (100, 80)) is None
    assert app.brush_mask([], (100, 80)) is None


@pytest.mark.slow
def test_in_a_browser_upload_unmask_and_see_slider_and_faces(demo, tmp_path):
    """Headless Chromium: the page loads with the notice, a photo is uploaded and unmasked,
    the before/after slider and the three face tiles appear; a photo without a face gets a
    message; every request stays on this server. Screenshots: tmp_path/{before,after}.png
    (copied to /tmp/demo_*.png)."""
    from playwright.sync_api import sync_playwright
    assert os.path.exists(CHROMIUM), f"{CHROMIUM} is missing: apt-get install -y chromium"
    _, url, photos = demo
    Image.fromarray(np.full((200, 240, 3), 120, np.uint8)).save(tmp_path / "wall.png")
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url)
            page.wait_for_selector("#unmask", timeout=60_000)
            assert "not the person's real face" in page.inner_text("#notice")
            page.screenshot(path=str(tmp_path / "before.png"), full_page=True)
            page.set_input_files("#photo input[type=file]", str(photos / "masked.png"))
            page.wait_for_selector("#photo img", timeout=30_000)
            page.click("#unmask")
            page.wait_for_function(
                "document.querySelectorAll('#faces img').length >= 3", timeout=180_000)
            slider = page.locator("#slider img")
            assert slider.count() == 2  # before and after
            for image in (slider.first, slider.last):
                image.wait_for(state="visible", timeout=30_000)
            record = page.inner_text("#record")
            assert "face_records" in record and '"ok"' in record
            assert "masked_unmasked" in page.inner_text("#download")
            page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / "after.png"), full_page=True)
            # A photo without a face: a message on the page.
            page.set_input_files("#photo input[type=file]", str(tmp_path / "wall.png"))
            page.wait_for_timeout(1000)
            page.click("#unmask")
            page.get_by_text("No face was found in the photo").first.wait_for(timeout=60_000)
            page.wait_for_timeout(500)
            page.screenshot(path=str(tmp_path / "no_face.png"), full_page=True)
        finally:
            browser.close()
    for name in ("before", "after"):
        shutil.copy(tmp_path / f"{name}.png", f"/tmp/demo_{name}.png")
    outside = [u for u in requests if urlparse(u).scheme in ("http", "https", "ws", "wss")
               and urlparse(u).hostname not in LOCAL_HOSTS]
    assert not outside, outside


@pytest.mark.slow
def test_the_command_serves_on_localhost_and_mistakes_are_one_message(tmp_path):
    """``python -m unmask_jax.demo`` with no flags: the starter weights on 127.0.0.1 (the
    page answers); ``--workdir`` without ``--config`` and a folder that is not a weights
    folder: one message, status 2."""
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               UNMASK_JAX_COMPILATION_CACHE=str(tmp_path / "jax_cache"))
    for args, message in ((["--workdir=x"], "--workdir needs --config"),
                          ([f"--weights={tmp_path}"], "not a weights folder")):
        proc = subprocess.run([sys.executable, "-m", "unmask_jax.demo", *args], cwd=REPO,
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "unmask_jax.demo", f"--port={port}"],
                              cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in server.stdout:
            lines.append(line)
            if "Running on local URL" in line or len(lines) > 400:
                break
        assert f"http://127.0.0.1:{port}" in "".join(lines), "".join(lines)[-3000:]
        assert "ganmasker_starter" in "".join(lines)
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30).read().decode()
        assert "Unmask a photo" in page
    finally:
        server.terminate()
        server.wait(timeout=60)
