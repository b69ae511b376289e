"""Tests of the procedural ``synthetic`` face source (small images, a few seconds in all)."""
from __future__ import annotations

import hashlib
import pickle

import cv2
import numpy as np
import pytest

from data_pipelines.sources.synthetic import SyntheticFaces, identity_traits

UPPER_KEYS = ("face_w", "eye_x", "eye_y", "eye_w", "brow_gap", "forehead_y")
LOWER_KEYS = ("chin_y", "jaw_taper", "nose_w", "nose_tip_y", "mouth_w", "lip_low")


def _lum(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def test_record_contract() -> None:
    src = SyntheticFaces(seed=3, num_records=20, resolution=64, images_per_identity=4)
    assert len(src) == 20 and src.has_identities and src.name == "synthetic"
    rec = src[9]
    assert rec["image"].dtype == np.uint8 and rec["image"].shape == (64, 64, 3)
    assert rec["landmarks"].dtype == np.float32 and rec["landmarks"].shape == (68, 2)
    assert rec["landmark_source"] == "synthetic"
    assert rec["identity"] == 2 and rec["index"] == 9
    assert rec["key"] == "synthetic/3/9" and rec["error"] == ""
    assert src[-1]["index"] == 19
    with pytest.raises(IndexError):
        src[20]


def test_identity_indices() -> None:
    src = SyntheticFaces(num_records=10, resolution=64, images_per_identity=4)
    assert src.num_identities == 3
    np.testing.assert_array_equal(src.identity_indices(1), [4, 5, 6, 7])
    np.testing.assert_array_equal(src.identity_indices(2), [8, 9])      # last, partial
    assert src.identity_indices(3).size == 0
    assert all(src[int(i)]["identity"] == 1 for i in src.identity_indices(1))


def test_bad_arguments() -> None:
    for kwargs in ({"resolution": 63}, {"resolution": 513}, {"num_records": 0},
                   {"images_per_identity": 0}, {"seed": -1}):
        with pytest.raises(ValueError):
            SyntheticFaces(**kwargs)


def test_determinism() -> None:
    a = SyntheticFaces(seed=5, resolution=64)
    b = SyntheticFaces(seed=5, resolution=64)
    ra, rb = a[17], b[17]
    assert ra["image"].tobytes() == rb["image"].tobytes()
    assert ra["landmarks"].tobytes() == rb["landmarks"].tobytes()
    assert a[18]["image"].tobytes() != ra["image"].tobytes()          # other index
    c = SyntheticFaces(seed=6, resolution=64)
    assert c[17]["image"].tobytes() != ra["image"].tobytes()          # other seed
    assert not np.allclose(c[17]["landmarks"], ra["landmarks"])


def test_pickle_round_trip() -> None:
    src = SyntheticFaces(seed=2, num_records=50, resolution=64, images_per_identity=3)
    assert all(isinstance(v, (int, str, bool)) for v in vars(src).values())
    clone = pickle.loads(pickle.dumps(src))
    assert clone[7]["image"].tobytes() == src[7]["image"].tobytes()
    assert clone.identity_indices(2).tolist() == src.identity_indices(2).tolist()


@pytest.mark.parametrize("res", [64, 512])
def test_resolutions(res: int) -> None:
    rec = SyntheticFaces(seed=1, resolution=res)[3]
    assert rec["image"].shape == (res, res, 3)
    lm = rec["landmarks"]
    assert np.all(lm >= 0) and np.all(lm <= res - 1)
    # Landmarks scale with the image: the face spans a similar fraction at every size.
    width = (lm[16, 0] - lm[0, 0]) / res
    assert 0.35 < width < 0.75


def test_landmarks_inside_ordered_and_framed() -> None:
    res = 96
    src = SyntheticFaces(seed=11, resolution=res, images_per_identity=1)
    for i in range(12):
        lm = src[i]["landmarks"].astype(np.float64)
        assert np.isfinite(lm).all()
        assert np.all(lm >= 0) and np.all(lm <= res - 1)
        eye_l, eye_r = lm[36:42].mean(0), lm[42:48].mean(0)
        eyes = 0.5 * (eye_l + eye_r)
        mouth = lm[48:68].mean(0)
        assert eye_l[0] < eye_r[0]                      # dlib "left" eye is on the image left
        assert lm[36, 0] < lm[39, 0] < lm[42, 0] < lm[45, 0]
        assert lm[48, 0] < lm[54, 0] and lm[31, 0] < lm[35, 0] and lm[0, 0] < lm[16, 0]
        assert lm[17:27, 1].mean() < eyes[1] < lm[30, 1] < mouth[1] < lm[8, 1]
        assert lm[27, 1] < lm[28, 1] < lm[29, 1] < lm[30, 1]
        assert lm[51, 1] < lm[62, 1] <= lm[66, 1] < lm[57, 1]   # lips: outer/inner order
        # Inner features sit inside the jaw contour closed over the top.
        jaw = np.concatenate([lm[0:17], lm[[26, 24, 19, 17]]]).astype(np.float32)
        for k in (30, 33, 48, 54, 57, 62):
            assert cv2.pointPolygonTest(jaw, (float(lm[k, 0]), float(lm[k, 1])), False) > 0
        # The face is roughly 50-65% of the width, near the centre.
        width = np.linalg.norm(lm[16] - lm[0]) / res
        assert 0.4 < width < 0.75, width
        assert np.all(np.abs(lm[[0, 16, 8, 27]].mean(0) / res - 0.5) < 0.2)


def test_landmarks_match_drawing() -> None:
    """The eye landmarks enclose a drawn eye: a dark iris inside a bright sclera."""
    res = 128
    src = SyntheticFaces(seed=4, resolution=res, images_per_identity=1)
    for i in range(6):
        rec = src[i]
        lum = _lum(rec["image"])
        for sl in (slice(36, 42), slice(42, 48)):
            poly = rec["landmarks"][sl]
            mask = np.zeros((res, res), np.uint8)
            cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
            cx, cy = np.round(poly.mean(0)).astype(int)
            inside = lum[mask > 0]
            assert inside.size >= 4
            iris = lum[cy - 1:cy + 2, cx - 1:cx + 2].min()   # the pupil may hold a glint
            assert iris < 0.7 * inside.max(), (i, iris, inside.max())


def test_identity_traits_fixed_and_shared_by_images() -> None:
    src = SyntheticFaces(seed=9, resolution=64, images_per_identity=4)
    assert src.identity_traits(3) == identity_traits(9, 3)
    assert src.identity_traits(3) != src.identity_traits(4)
    # Images of one identity are closer in skin colour (at the cheek) than other identities.
    cheek: dict[int, list[np.ndarray]] = {}
    for ident in range(8):
        for i in src.identity_indices(ident)[:3]:
            rec = src[int(i)]
            lm = rec["landmarks"]
            x, y = np.round(0.5 * (lm[1] + lm[29])).astype(int)
            patch = rec["image"][y - 1:y + 2, x - 1:x + 2].reshape(-1, 3).astype(np.float64)
            cheek.setdefault(ident, []).append(np.median(patch, 0))
    within = np.mean([np.linalg.norm(c[a] - c[b]) for c in cheek.values()
                      for a in range(3) for b in range(a + 1, 3)])
    means = np.array([np.mean(c, 0) for c in cheek.values()])
    between = np.mean([np.linalg.norm(means[a] - means[b])
                       for a in range(len(means)) for b in range(a + 1, len(means))])
    assert within < 0.7 * between, (within, between)


def test_same_identity_renders_differently() -> None:
    src = SyntheticFaces(seed=9, resolution=64, images_per_identity=4)
    a, b = src[0], src[1]
    assert a["identity"] == b["identity"]
    assert not np.allclose(a["landmarks"], b["landmarks"])           # other pose
    assert np.abs(a["image"].astype(int) - b["image"].astype(int)).mean() > 5


def test_lower_face_traits_independent_of_upper() -> None:
    traits = [identity_traits(0, i) for i in range(300)]
    up = np.array([[t[k] for k in UPPER_KEYS] for t in traits])
    low = np.array([[t[k] for k in LOWER_KEYS] for t in traits])
    corr = np.corrcoef(np.concatenate([up, low], 1).T)[:len(UPPER_KEYS), len(UPPER_KEYS):]
    assert np.abs(corr).max() < 0.25, corr
    assert low.std(0).min() > 0.0
    # Varied styles appear.
    assert len({t["hair_style"] for t in traits}) >= 7
    assert len({t["beard_style"] for t in traits}) == 5
    assert 0.15 < np.mean([t["glasses_wearer"] for t in traits]) < 0.45


def _lower_faces(src: SyntheticFaces, indices: range) -> np.ndarray:
    """Luminance of the nose-to-chin region, warped to a 24 px frame (eyes and chin fixed)."""
    dst = np.float32([[6, 0], [18, 0], [12, 23]])
    out = []
    for i in indices:
        rec = src[i]
        lm = rec["landmarks"]
        tri = np.float32([lm[36:42].mean(0), lm[42:48].mean(0), lm[8]])
        warp = cv2.getAffineTransform(tri, dst)
        crop = cv2.warpAffine(rec["image"], warp, (24, 24), flags=cv2.INTER_AREA)
        out.append(_lum(crop)[10:23, 3:21])
    return np.stack(out)


def test_lower_face_varies_across_identities() -> None:
    """The region a mask covers (nose to chin) changes a lot from identity to identity."""
    many = _lower_faces(SyntheticFaces(seed=21, resolution=96, images_per_identity=1),
                        range(16))
    one = _lower_faces(SyntheticFaces(seed=21, resolution=96, images_per_identity=16),
                       range(16))
    across, within = many.var(0).mean(), one.var(0).mean()
    assert across > 600.0, across                       # std > ~25 grey levels per pixel
    assert across > 2.0 * within, (across, within)      # identity, not just pose/lighting
    # Not flat within one image either: features (nostrils, lips) are drawn there.
    assert np.mean([x.std() for x in many]) > 5.0


# sha256 (first 20 hex digits) of image bytes + landmark bytes of SyntheticFaces(seed=0,
# images_per_identity=1) records, recorded before the renderer was split into modules. The
# identities cover every hair style, beard style, glasses, moles; 160 px and up draw hair
# strands. A change here means rendering changed (or OpenCV's rasteriser did: these were
# taken with opencv-python 5.0.0).
RENDER_DIGESTS = {
    (160, 0): "be889c82364c293b1af2",
    (160, 1): "8b4db1524c9762f08db9",
    (160, 2): "78aac14b8cd4adfde7df",
    (160, 3): "cc2bf7fa373b0438db44",
    (160, 5): "27cdd2b510a354c0a6c1",
    (160, 6): "28fd9d2000e7d3b15f12",
    (160, 7): "0a68876c36fef3b7136a",
    (160, 8): "abe7dff8ee0aba947bd0",
    (160, 9): "18bee763e76fb24c19db",
    (160, 10): "bf024c1a8b3c4b340fd5",
    (160, 16): "36d65f017326dde7a220",
    (160, 23): "260b73fa5d70bcc81b0a",
    (512, 7): "b72bd5cfae41823f5329",
    (512, 16): "412764090babd56192ae",
    (64, 4): "6b799a35c3e058f4fba2",
}
TRAITS_DIGEST = "b290caa211a3f245e269"  # identity_traits(0, 0..39), sorted items' repr


def test_rendering_is_pinned() -> None:
    got = {}
    for res, index in RENDER_DIGESTS:
        rec = SyntheticFaces(seed=0, num_records=100, resolution=res,
                             images_per_identity=1)[index]
        h = hashlib.sha256(rec["image"].tobytes())
        h.update(rec["landmarks"].tobytes())
        got[(res, index)] = h.hexdigest()[:20]
    assert got == RENDER_DIGESTS
    h = hashlib.sha256()
    for identity in range(40):
        h.update(repr(sorted(identity_traits(0, identity).items())).encode())
    assert h.hexdigest()[:20] == TRAITS_DIGEST
