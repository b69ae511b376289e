"""dlib's MMOD CNN face detector in JAX (unmask_jax.features.dlib_mmod): file reading, the
tiled pyramid, and detections against dlib's own ``cnn_face_detection_model_v1``."""

import dlib
import numpy as np
import pytest

from data_pipelines.landmarks import detect
from data_pipelines.sources.synthetic import SyntheticFaces
from unmask_jax.features import dlib_mmod as mm
from unmask_jax.features import dlib_serialize as ds


@pytest.fixture(scope="module")
def path():
    return detect.predictor_path(detect.CNN_DETECTOR_FILE)


@pytest.fixture(scope="module")
def detector(path):
    return mm.MmodDetector.from_file(path)


@pytest.fixture(scope="module")
def reference(path):
    return dlib.cnn_face_detection_model_v1(path)


@pytest.fixture(scope="module")
def faces():
    """Procedural faces (the embedded synthetic source), 256x256, and two crops of other
    sizes (not multiples of the canvas bucket)."""
    src = SyntheticFaces(seed=0, num_records=8, resolution=256, images_per_identity=1)
    imgs = [np.asarray(src[i]["image"]) for i in range(8)]
    return imgs + [np.ascontiguousarray(imgs[1][10:240, 3:253]),
                   np.ascontiguousarray(imgs[2][:201, 20:])]


def test_real_file_structure(path):
    layers = ds.read_dlib_network_file(path)
    kinds = [layer.kind for layer in layers]
    assert kinds[0] == "input_rgb_image_pyramid" and kinds[-1] == "loss_mmod"
    assert kinds.count("con") == 7 and kinds.count("bn_con") == 6 and kinds.count("relu") == 6
    assert layers[0].fields["pyramid_padding"] == 10  # version 1: dlib's defaults
    assert layers[0].fields["pyramid_outer_padding"] == 11
    spec, params = mm.build_mmod(layers)
    assert spec.window == (80, 80)
    assert spec.nms[0] == pytest.approx(0.338, abs=1e-3) and spec.nms[1] == 1.0
    assert [k.shape for k, _ in params][:2] == [(5, 5, 3, 16), (5, 5, 16, 32)]
    assert params[-1][0].shape == (9, 9, 45, 1)
    assert [s for _, s, _, _ in spec.convs] == [(2, 2)] * 3 + [(1, 1)] * 4
    assert [relu for *_, relu in spec.convs] == [True] * 6 + [False]
    # Output cell (r, c) is centred at 8 * (r, c) + 14 in the canvas.
    y, x = mm.output_to_canvas(spec, np.array([0, 3]), np.array([0, 5]))
    assert list(y) == [14, 38] and list(x) == [14, 54]


def test_unsupported_files_are_refused():
    newer_options = ds.pack_int(1) + ds.pack_string("loss_mmod_") + ds.pack_int(4)
    with pytest.raises(ds.DlibFormatError, match="mmod_options version 4"):
        ds.read_dlib_network(newer_options)
    with pytest.raises(ds.DlibFormatError, match="unsupported loss layer"):
        ds.read_dlib_network(ds.pack_int(1) + ds.pack_string("loss_yolo_"))


def test_bn_folding_is_dlibs_affine():
    conv = ds.DlibLayer("con", {"nr": 1, "nc": 1, "stride_y": 1, "stride_x": 1,
                                "padding_y": 0, "padding_x": 0},
                        {"filters": np.full((1, 1, 1, 1), 2.0, np.float32),
                         "biases": np.array([1.0], np.float32)})
    bn = ds.DlibLayer("bn_con", {"eps": 0.25},
                      {"gamma": np.array([3.0], np.float32), "beta": np.array([0.5], np.float32),
                       "running_means": np.array([1.0], np.float32),
                       "running_variances": np.array([0.75], np.float32)})
    inp = ds.DlibLayer("input_rgb_image_pyramid", {
        "avg_red": 0.0, "avg_green": 0.0, "avg_blue": 0.0, "pyramid_padding": 10,
        "pyramid_outer_padding": 11})
    loss = ds.DlibLayer("loss_mmod", {"detector_width": 8, "detector_height": 8,
                                      "nms_iou_thresh": 0.5, "nms_percent_covered_thresh": 1.0})
    _, params = mm.build_mmod([inp, conv, bn, loss])
    # bn(conv(x)) = 3 * (2x + 1 - 1) / sqrt(0.75 + 0.25) + 0.5 = 6x + 0.5
    assert params[0][0].reshape(()) == pytest.approx(6.0)
    assert params[0][1][0] == pytest.approx(0.5)
    with pytest.raises(ds.DlibFormatError):
        mm.build_mmod([inp, bn, conv, loss])  # a batch norm before any convolution


def test_pyramid_layout_shapes():
    rects, h, w = mm.pyramid_layout(256, 256, 10, 11)
    assert rects[0] == (11, 11, 256, 256) and w == 256 + 22
    sizes = [(rh, rw) for _, _, rh, rw in rects]
    assert sizes[:3] == [(256, 256), (213, 213), (177, 177)]
    assert all(rh >= mm.MIN_LEVEL_ROWS for rh, _ in sizes)
    for i, (t, l, rh, rw) in enumerate(rects):  # inside the canvas, no two levels overlap
        assert t >= 11 and l >= 11 and t + rh <= h - 11 + 1 and l + rw <= w - 11 + 1
        for t2, l2, rh2, rw2 in rects[i + 1:]:
            assert t + rh <= t2 or t2 + rh2 <= t or l + rw <= l2 or l2 + rw2 <= l


@pytest.mark.slow
def test_detections_match_dlib(detector, reference, faces):
    found = 0
    for img in faces:
        ref = [(d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence)
               for d in reference(img, 0)]
        ours = detector(img, 0)
        assert len(ours) == len(ref), (img.shape, ours, ref)
        for a, b in zip(ours, ref):
            assert [int(np.floor(v + 0.5)) for v in a[:4]] == list(b[:4]), (a, b)
            assert abs(a[4] - b[4]) < 1e-3, (a, b)  # measured ~1e-6
        found += bool(ref)
    assert found >= 7  # the faces are found at all: the comparison means something


def test_bucket_padding_keeps_dlibs_scores(path, faces):
    exact = mm.MmodDetector.from_file(path, bucket=1)
    padded = mm.MmodDetector.from_file(path, bucket=64)
    for img in (faces[4], faces[9]):
        a, rects_a = exact.scores(img)
        b, rects_b = padded.scores(img)
        assert rects_a == rects_b and a.shape == b.shape
        np.testing.assert_allclose(b, a, atol=1e-4)
        assert a.max() > 0  # a face is there


def test_upsample_matches_dlib(detector, reference, faces):
    import cv2

    found = 0
    for img in (faces[1], faces[3], faces[5]):
        small = cv2.resize(img, (96, 88), interpolation=cv2.INTER_AREA)
        assert detector(small, 0) == [] and len(reference(small, 0)) == 0  # below 80 px
        ours, ref = detector(small, 1), reference(small, 1)
        assert len(ours) == len(ref)
        for a, b in zip(ours, ref):  # dlib's pyramid_up and its box mapping
            assert [int(np.floor(v + 0.5)) for v in a[:4]] == [
                b.rect.left(), b.rect.top(), b.rect.right(), b.rect.bottom()]
            assert abs(a[4] - b.confidence) < 2e-2  # upsampled pixels within 1 grey level
        found += len(ref)
    assert found >= 2


def test_pyramid_up2_is_dlibs_resize():
    rgb = np.random.default_rng(0).integers(0, 256, (23, 31, 3), dtype=np.uint8)
    up = mm.pyramid_up2(rgb)
    # dlib's rect_up of the image rectangle: last row (22 + 0.75) * 2 = 45.5 -> 46, last
    # column (30 + 1.25) * 2 = 62.5 -> 63
    assert up.shape == (47, 64, 3)
    ref = np.asarray(dlib.resize_image(rgb, 47, 64))
    diff = np.abs(up.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.02


def test_tiny_and_grey_images(detector, reference):
    for shape in ((1, 1, 3), (7, 9, 3), (40, 30, 3)):
        assert detector(np.full(shape, 128, np.uint8), 0) == []
    assert len(reference(np.full((40, 30, 3), 128, np.uint8), 0)) == 0
    assert detector(np.zeros((0, 5, 3), np.uint8)) == []
    assert detector(np.full((64, 64), 90, np.uint8), 1) == []  # grey (H, W) accepted
    # dlib's own CNN raises on such an image and can leave the process corrupted (a later
    # segmentation fault): detect_faces does not give it images that small.
    tiny = np.full((7, 9, 3), 128, np.uint8)
    assert detect.detect_faces(tiny, detector="cnn") == []


def test_detect_faces_uses_the_given_cnn(faces):
    calls = []

    def stub(rgb, upsample):
        calls.append((rgb.shape, upsample))
        return [(40, 50, 200, 210, 1.0)] if upsample == 0 else []

    blank = np.zeros((256, 256, 3), np.uint8)  # HOG finds nothing here
    lms = detect.detect_faces(blank, detector="hog+cnn", cnn=stub)
    assert calls == [((256, 256, 3), 0)] and len(lms) == 1
    assert lms[0].shape == (68, 2)
