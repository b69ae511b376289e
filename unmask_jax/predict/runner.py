"""The ``--mode=predict`` loop: files -> decode -> detect -> frame -> batched model ->
paste back -> encode, with a per-file report and a per-stage time breakdown.

Faces are queued across images and run ``predict.batch_size`` at a time (padded to a
power-of-two bucket: one compilation per bucket); an image is written as soon as all its
faces are back. A bad file is reported with its status and never ends the run.
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import sys
import time
from typing import Any

import numpy as np

from data_pipelines.landmarks import detect
from unmask_jax.predict import faces as faces_lib
from unmask_jax.predict import io
from unmask_jax.predict.model import PredictModel, PredictSetupError

log = logging.getLogger(__name__)

FACES = ("all", "largest")
DETECTORS = detect.DETECTORS
STAGES = ("decode", "detection", "model", "paste", "encode")
REPORT_NAME = "report.json"
FACES_DIR = "faces"


class PredictInterrupted(Exception):
    """Ctrl-C during a run: the report of what was done is written (``report_path``)."""

    def __init__(self, report_path: str, report: dict[str, Any]):
        super().__init__(report_path)
        self.report_path, self.report = report_path, report


def check_output(input_path: str, output_dir: str, overwrite: bool) -> None:
    """Refuses an output folder that would overwrite the inputs or earlier results: the
    input folder itself, a folder that holds the inputs, or one that already holds files
    (unless ``config.predict.overwrite``)."""
    out = os.path.realpath(output_dir)
    src = os.path.realpath(input_path)
    src_dir = src if os.path.isdir(src) else os.path.dirname(src)
    if os.path.exists(src) and out == src_dir:
        raise PredictSetupError(
            f"--output={output_dir} is the input folder: the results would overwrite the "
            "photos; choose another folder (e.g. a new one beside it)")
    if os.path.exists(src) and (src + os.sep).startswith(out + os.sep):
        raise PredictSetupError(
            f"--input={input_path} is inside --output={output_dir}: choose an output folder "
            "outside the inputs' folder")
    if os.path.isdir(out) and any(not n.startswith(".") for n in os.listdir(out)) \
            and not overwrite:
        raise PredictSetupError(
            f"--output={output_dir} already holds files; files of the same name would be "
            "replaced. Choose a new folder, or pass --config.predict.overwrite=True")
    if os.path.exists(out) and not os.path.isdir(out):
        raise PredictSetupError(f"--output={output_dir} is a file; name a folder")


@dataclasses.dataclass(frozen=True)
class PredictOptions:
    """``config.predict`` (see ``configs/default.py``), checked."""

    faces: str = "all"
    batch_size: int = 8
    side_by_side: bool = False
    mask: str | None = None
    identity: str | None = None
    dilate: float = 0.04
    feather: float = 0.03
    min_face: int = 32
    max_pixels: int = 100_000_000
    detect_max_side: int = 1600
    detect_upsample: bool = True
    detector: str = "hog+cnn"
    cnn_backend: str = "jax"
    overwrite: bool = False
    save_faces: bool = False

    @classmethod
    def from_config(cls, config) -> "PredictOptions":
        p = dict(config.predict)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(p) - known)
        if unknown:
            raise ValueError(f"config.predict: unknown key(s) {unknown}")
        o = cls(**p)
        if o.faces not in FACES:
            raise ValueError(f"config.predict.faces={o.faces!r}: choose one of {FACES}")
        if o.detector not in DETECTORS:
            raise ValueError(f"config.predict.detector={o.detector!r}: choose one of "
                             f"{DETECTORS}")
        if o.cnn_backend not in faces_lib.CNN_BACKENDS:
            raise ValueError(f"config.predict.cnn_backend={o.cnn_backend!r}: choose one of "
                             f"{faces_lib.CNN_BACKENDS}")
        for key in ("batch_size", "min_face", "max_pixels", "detect_max_side"):
            if int(getattr(o, key)) < 1:
                raise ValueError(f"config.predict.{key}={getattr(o, key)} must be >= 1")
        for key in ("dilate", "feather"):
            if not 0.0 <= float(getattr(o, key)) <= 0.5:
                raise ValueError(f"config.predict.{key}={getattr(o, key)} must be in [0, 0.5] "
                                 "(a fraction of the face crop's side)")
        return o


@dataclasses.dataclass
class _Face:
    box: tuple[float, float, float]
    landmarks: np.ndarray                 # float32 (68, 2) in image pixels
    crop: np.ndarray                      # uint8 (R, R, 3)
    crop_landmarks: np.ndarray
    index: int
    user_mask: np.ndarray | None = None   # float32 (R, R, 1) {0, 1}
    identity: np.ndarray | None = None    # uint8 (R, R, 3)
    raw: np.ndarray | None = None         # float32 (R, R, 3) [-1, 1]
    mask: np.ndarray | None = None        # float32 (R, R, 1) probabilities (model's map)


@dataclasses.dataclass
class _Job:
    rel: str
    entry: dict[str, Any]
    decoded: io.Decoded
    faces: list[_Face]
    times: dict[str, float]
    done: int = 0


@dataclasses.dataclass
class _Pasted:
    """What was pasted back for one face, in crop pixels."""

    region: np.ndarray                    # float32 (R, R) {0, 1}: the map used
    rgb: np.ndarray                       # float32 (R, R, 3) 0..255: the model's output
    weights: np.ndarray                   # float32 (R, R) [0, 1]: the feathered paste weights


@dataclasses.dataclass
class Unmasked:
    """One image unmasked in memory (``Predictor.unmask``)."""

    result: np.ndarray                    # the unmasked image, the input's upright layout
    entry: dict[str, Any]                 # its record, as in report.json's "files"
    tiles: list[dict[str, np.ndarray]]    # per face: ``face_tiles``


def image_info(decoded: io.Decoded) -> dict[str, Any]:
    """What the report says of a decoded image: size, format, channel layout, bits."""
    h, w = decoded.shape
    info: dict[str, Any] = {"size": [w, h], "format": decoded.format, "kind": decoded.kind,
                            "bits": 16 if decoded.native.dtype == np.uint16 else 8}
    if decoded.orientation != 1:
        info["exif_orientation"] = decoded.orientation
    return info


def face_tiles(crop: np.ndarray, pasted: _Pasted) -> dict[str, np.ndarray]:
    """uint8 (R, R, 3) images of one face at the model's resolution: the crop the model saw
    ("crop"), the map it used ("map", white = replaced) and the unmasked face as pasted back
    ("unmasked": the model's pixels inside the feathered map, the crop's outside)."""
    mask = np.repeat((np.clip(pasted.region, 0, 1) * 255).astype(np.uint8)[..., None], 3,
                     axis=2)
    w = np.asarray(pasted.weights, np.float32).reshape(crop.shape[:2] + (1,))
    unmasked = np.clip(np.round(pasted.rgb * w + crop.astype(np.float32) * (1.0 - w)), 0, 255
                       ).astype(np.uint8)
    return {"crop": crop, "map": mask, "unmasked": unmasked}


class _Progress:
    """A plain stderr progress bar (redrawn in place on a terminal, a line per 10% else)."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled = total, enabled and total > 1
        self.tty = sys.stderr.isatty()
        self.count, self.t0, self.last, self.last_decile = 0, time.perf_counter(), 0.0, -1

    def update(self, status: str) -> None:
        self.count += 1
        if not self.enabled:
            return
        now = time.perf_counter()
        rate = self.count / max(now - self.t0, 1e-9)
        decile = 10 * self.count // self.total
        if self.tty and (now - self.last > 0.2 or self.count == self.total):
            filled = 30 * self.count // self.total
            sys.stderr.write(f"\rpredict [{'#' * filled}{'.' * (30 - filled)}] "
                             f"{self.count}/{self.total} {rate:.2f} img/s ({status})   ")
            if self.count == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()
            self.last = now
        elif not self.tty and decile != self.last_decile:
            print(f"predict: {self.count}/{self.total} files, {rate:.2f} img/s",
                  file=sys.stderr, flush=True)
            self.last_decile = decile


def _to_unit(images: list[np.ndarray]) -> np.ndarray:
    return np.stack(images).astype(np.float32) / np.float32(127.5) - np.float32(1.0)


class _Side:
    """An optional per-input side image (mask or identity): one file or a mirrored folder."""

    def __init__(self, path: str | None, what: str):
        self.path, self.what = path, what
        if path and not os.path.exists(path):
            raise FileNotFoundError(f"config.predict.{what}={path}: no such file or folder")
        self.folder = bool(path) and os.path.isdir(path)
        self.cache: dict[str, Any] = {}

    def file_for(self, rel: str) -> str:
        if not self.folder:
            return self.path
        found = io.mirrored(self.path, rel)
        if found is None:
            raise io.BadInput(f"no_{self.what}", f"no {self.what} image for {rel} in "
                              f"{self.path} (same relative path, any image extension)")
        return found


class Predictor:
    """Runs a loaded model over files (``run`` returns the report) or over one image in
    memory (``unmask``). ``identity_per_call``: identity photos come with each ``unmask``
    call, not from ``predict.identity`` (which is then not required)."""

    def __init__(self, config, workdir: str, *, detector: faces_lib.Detector | None = None,
                 progress: bool = True, identity_per_call: bool = False):
        self.opts = PredictOptions.from_config(config)
        self.masks = _Side(self.opts.mask, "mask")
        self.identities = _Side(self.opts.identity, "identity")
        self.model = PredictModel(config, workdir, identity_per_call=identity_per_call)
        self._user_model: PredictModel | None = None   # ``_model_for``'s user-map variant
        self.geometry = self.model.geometry
        self.detector = detector or faces_lib.dlib_detector(
            self.opts.detect_upsample, self.opts.detector, self.opts.cnn_backend)
        self.progress = progress

    # -- per file ------------------------------------------------------------------------

    def _detect(self, rgb: np.ndarray) -> list[np.ndarray]:
        return faces_lib.detect(self.detector, rgb, self.opts.detect_max_side)

    def identity_crop(self, path: str) -> np.ndarray:
        """The identity photo at ``path`` framed as the model's faces: its largest face's
        crop (uint8 (R, R, 3)); BadInput bad_identity / no_identity_face."""
        try:
            decoded = io.decode(path, self.opts.max_pixels)
        except io.BadInput as e:
            raise io.BadInput("bad_identity", f"identity image {path}: {e}") from None
        rgb = decoded.rgb8()
        found = self._detect(rgb)
        if not found:
            raise io.BadInput("no_identity_face", f"no face found in the identity image {path}")
        return self.geometry.crop(rgb, self.geometry.box(found[0]))

    def _identity_crop(self, rel: str) -> np.ndarray:
        path = self.identities.file_for(rel)
        if path in self.identities.cache:
            return self.identities.cache[path]
        crop = self.identity_crop(path)
        if not self.identities.folder:
            self.identities.cache[path] = crop
        return crop

    def _find_faces(self, rgb: np.ndarray, info: dict[str, Any], times: dict[str, float]
                    ) -> list[np.ndarray]:
        """Landmarks of the faces to unmask in ``rgb``, largest first (only the largest with
        ``faces=largest``); ``faces_found`` goes to ``info``. BadInput too_small / no_face."""
        h, w = rgb.shape[:2]
        if min(h, w) < self.opts.min_face:
            raise io.BadInput("too_small", f"{w}x{h} is smaller than "
                              f"config.predict.min_face={self.opts.min_face} px")
        t = time.perf_counter()
        found = self._detect(rgb)
        times["detection"] += time.perf_counter() - t
        info["faces_found"] = len(found)
        if not found:
            raise io.BadInput("no_face", "no face found")
        big = [lm for lm in found if faces_lib.face_size(lm) >= self.opts.min_face]
        if not big:
            raise io.BadInput("too_small", f"{len(found)} face(s) found, all narrower than "
                              f"config.predict.min_face={self.opts.min_face} px")
        return big[:1] if self.opts.faces == "largest" else big

    def _frame(self, rgb: np.ndarray, landmarks: list[np.ndarray],
               user_mask: np.ndarray | None, identity: np.ndarray | None) -> list[_Face]:
        """Each face framed in the model's geometry, with its crop of the user's mask (bool
        (H, W), True = masked) when one is given."""
        g = self.geometry
        out = []
        for rank, lm in enumerate(landmarks):
            box = g.box(lm)
            # The face's rank in its image keys per-image dropout (pix2pix family's
            # eval.bn_statistics=per_image): a photo gives the same result in any folder.
            face = _Face(box=box, landmarks=np.asarray(lm, np.float32), crop=g.crop(rgb, box),
                         crop_landmarks=g.crop_landmarks(lm, box), index=rank,
                         identity=identity)
            if user_mask is not None:
                face.user_mask = (g.crop(user_mask.astype(np.uint8) * 255, box) > 127
                                  ).astype(np.float32)[..., None]
            out.append(face)
        return out

    def _prepare(self, root: str, rel: str, times: dict[str, float]
                 ) -> tuple[io.Decoded, list[_Face], dict[str, Any]]:
        t = time.perf_counter()
        decoded = io.decode(os.path.join(root, rel), self.opts.max_pixels)
        info = image_info(decoded)
        rgb = decoded.rgb8()
        times["decode"] += time.perf_counter() - t
        found = self._find_faces(rgb, info, times)
        t = time.perf_counter()
        user_mask = None
        if self.masks.path:
            user_mask = io.load_mask(self.masks.file_for(rel), decoded.shape)
        identity = self._identity_crop(rel) if self.model.needs_identity else None
        out = self._frame(rgb, found, user_mask, identity)
        times["decode"] += time.perf_counter() - t
        return decoded, out, info

    def _model_for(self, user_masks: bool) -> PredictModel:
        """The model as configured; for faces that carry the user's mask while the model
        finds or reads its map elsewhere, its variant that takes the user's map (built once)."""
        if not user_masks or self.model.plan.source == "user":
            return self.model
        if self._user_model is None:
            self._user_model = self.model.with_user_masks()
        return self._user_model

    def _run_model(self, chunk: list[tuple[_Job, _Face]]) -> None:
        t = time.perf_counter()
        fs = [f for _, f in chunk]
        user = np.stack([f.user_mask for f in fs]) if fs[0].user_mask is not None else None
        identity = _to_unit([f.identity for f in fs]) if fs[0].identity is not None else None
        out = self._model_for(user is not None)(_to_unit([f.crop for f in fs]),
                                                user, identity,
                                                np.array([f.index for f in fs]),
                                                self.opts.batch_size)
        for i, f in enumerate(fs):
            f.raw = out["raw"][i]
            f.mask = out["mask"][i] if "mask" in out else None
        share = (time.perf_counter() - t) / len(chunk)
        for job, _ in chunk:
            job.times["model"] += share
            job.done += 1

    def _region(self, face: _Face) -> np.ndarray:
        if face.user_mask is not None:  # the user's map wins (predict.mask, or per image)
            return face.user_mask[..., 0]
        if self.model.map_threshold is not None:  # a map from a run or the system itself
            return (face.mask[..., 0] >= self.model.map_threshold).astype(np.float32)
        return faces_lib.lower_face_region(face.crop_landmarks, self.geometry.resolution)

    def _paste(self, decoded: io.Decoded, faces: list[_Face]
               ) -> tuple[np.ndarray, list[_Pasted]]:
        """(the image with every face's output pasted back, in ``decoded``'s layout; what
        was pasted per face)."""
        result = decoded.native.copy()
        pasted = []
        for face in faces:
            region = self._region(face)
            weights = faces_lib.paste_weights(region, self.opts.dilate, self.opts.feather)
            rgb = (face.raw.astype(np.float32) + 1.0) * 127.5
            faces_lib.paste(result, decoded.from_rgb, decoded.colour_channels, rgb, weights,
                            face.box)
            pasted.append(_Pasted(region, rgb, weights))
        return result, pasted

    def _finish(self, job: _Job, out_dir: str) -> None:
        t = time.perf_counter()
        d = job.decoded
        result, pasted = self._paste(d, job.faces)
        records = []
        for k, (face, p) in enumerate(zip(job.faces, pasted, strict=True)):
            records.append(self._face_record(face, p.region))
            if self.opts.save_faces:
                records[-1]["files"] = self._save_face(job.rel, k, face, p, out_dir)
        job.entry["face_records"] = records
        job.times["paste"] += time.perf_counter() - t
        t = time.perf_counter()
        out_path = os.path.join(out_dir, job.rel)
        io.write_bytes(out_path, io.encode(d, result))
        if self.opts.side_by_side:
            both = np.concatenate([d.native, result], axis=1)
            io.write_bytes(io.side_by_side_path(out_path), io.encode(d, both, upright=True))
            job.entry["side_by_side"] = io.side_by_side_path(out_path)
        job.times["encode"] += time.perf_counter() - t
        job.entry.update(status="ok", output=out_path, faces=len(job.faces))

    def _face_record(self, face: _Face, region: np.ndarray) -> dict[str, Any]:
        """What the report says of one face: where it is, how much was replaced, by what."""
        from data_pipelines import align
        x0, y0, side = align.pixel_square(face.box)
        return {"box": {"x": int(x0), "y": int(y0), "side": int(side)},
                "landmarks": np.round(face.landmarks, 1).tolist(),
                "mask_fraction": round(float(np.mean(region > 0.5)), 4),
                "weights": self._model_for(face.user_mask is not None).weights_id}

    def _save_face(self, rel: str, k: int, face: _Face, pasted: _Pasted, out_dir: str
                   ) -> dict[str, str]:
        """``faces/<input path>.face<k>.{crop,map,unmasked,side_by_side}.png`` at the model's
        resolution (``face_tiles``, and the three side by side)."""
        tiles = face_tiles(face.crop, pasted)
        tiles["side_by_side"] = np.concatenate(list(tiles.values()), axis=1)
        base = os.path.join(out_dir, FACES_DIR, f"{rel}.face{k}")
        files = {}
        for name, tile in tiles.items():
            path = f"{base}.{name}.png"
            io.write_bytes(path, io.png_bytes(tile))
            files[name] = path
        return files

    # -- one image in memory -------------------------------------------------------------

    def unmask(self, decoded: io.Decoded, *, mask: np.ndarray | None = None,
               identity: np.ndarray | None = None, name: str = "") -> Unmasked:
        """One decoded image (``io.decode``) in memory, as the file loop does it: the same
        detection, framing, model and paste-back; nothing is written.

        ``mask``: bool (H, W) upright, True = masked: replaces the mask map for every face
        (as ``predict.mask`` does for files); ``identity``: the identity crop
        (``identity_crop``) for a model that needs one; ``name``: the report's ``input``.
        Raises ``io.BadInput`` (no_face, too_small, no_identity, ...) as a file's status."""
        times = dict.fromkeys(STAGES, 0.0)
        entry: dict[str, Any] = {"input": name, "output": None, "status": None, "faces": 0}
        info = image_info(decoded)
        t = time.perf_counter()
        rgb = decoded.rgb8()
        times["decode"] += time.perf_counter() - t
        found = self._find_faces(rgb, info, times)
        if mask is not None and tuple(mask.shape) != tuple(decoded.shape):
            raise io.BadInput("bad_mask", f"the mask is {mask.shape[1]}x{mask.shape[0]}, the "
                              f"image {decoded.shape[1]}x{decoded.shape[0]}: draw the mask at "
                              "the image's size")
        if self.model.needs_identity and identity is None:
            raise io.BadInput("no_identity", f"{self.model.system.name} conditions on another "
                              "photo of the same person: give an identity photo")
        job = _Job(name, entry, decoded, self._frame(rgb, found, mask, identity), times)
        entry.update(info)
        bs = self.opts.batch_size
        for i in range(0, len(job.faces), bs):
            self._run_model([(job, f) for f in job.faces[i:i + bs]])
        t = time.perf_counter()
        result, pasted = self._paste(decoded, job.faces)
        entry["face_records"] = [self._face_record(f, p.region)
                                 for f, p in zip(job.faces, pasted, strict=True)]
        times["paste"] += time.perf_counter() - t
        entry.update(status="ok", faces=len(job.faces),
                     seconds=round(sum(times.values()), 4),
                     stages={k: round(v, 4) for k, v in times.items()})
        tiles = [face_tiles(f.crop, p) for f, p in zip(job.faces, pasted, strict=True)]
        return Unmasked(result=result, entry=entry, tiles=tiles)

    # -- the run -------------------------------------------------------------------------

    def run(self, input_path: str, output_dir: str) -> dict[str, Any]:
        check_output(input_path, output_dir, self.opts.overwrite)
        root, rels = io.list_inputs(input_path, exclude=output_dir)
        if os.path.realpath(output_dir) == os.path.realpath(root):
            raise PredictSetupError(f"--output={output_dir} is the input folder: the results "
                                    "would overwrite the photos; choose another folder")
        os.makedirs(output_dir, exist_ok=True)
        totals = dict.fromkeys(STAGES, 0.0)
        entries: list[dict[str, Any]] = []
        pending: list[_Job] = []
        queue: list[tuple[_Job, _Face]] = []
        progress = _Progress(len(rels), self.progress)
        bs = self.opts.batch_size
        t_start = time.perf_counter()

        def close(entry, times):
            entry["seconds"] = round(sum(times.values()), 4)
            entry["stages"] = {k: round(v, 4) for k, v in times.items()}
            for k, v in times.items():
                totals[k] += v
            progress.update(entry["status"])

        def fail(job: _Job, err: Exception) -> None:
            status = err.status if isinstance(err, io.BadInput) else "error"
            if status == "error":
                log.exception("predict: %s failed", job.rel)
            job.entry.update(status=status, output=None, faces=0,
                             message=str(err) or type(err).__name__)

        def drain(force: bool) -> None:
            while len(queue) >= bs or (force and queue):
                chunk, queue[:] = queue[:bs], queue[bs:]
                try:
                    self._run_model(chunk)
                except Exception as e:  # pylint: disable=broad-except
                    for job in {id(j): j for j, _ in chunk}.values():
                        fail(job, e)
                        job.done = len(job.faces)
            while pending and pending[0].done >= len(pending[0].faces):
                job = pending.pop(0)
                if job.entry.get("status") is None:
                    try:
                        self._finish(job, output_dir)
                    except Exception as e:  # pylint: disable=broad-except
                        fail(job, e)
                job.faces.clear()
                close(job.entry, job.times)

        try:
            self._loop(root, rels, entries, pending, queue, drain, fail)
        except KeyboardInterrupt:
            # Ctrl-C: the files already written keep their report; the rest are listed as
            # not done.
            interrupted = True
            done = {e["input"] for e in entries if e.get("status") is not None}
            for job in pending:
                if job.entry.get("status") is None:
                    job.entry.update(status="interrupted", output=None, faces=0)
            for e in entries:
                if e.get("status") is None:
                    e.update(status="interrupted", output=None, faces=0)
            entries.extend({"input": os.path.join(root, rel), "output": None,
                            "status": "not_started", "faces": 0}
                           for rel in rels[len(entries):])
            log.warning("predict: interrupted after %d of %d file(s); report written",
                        len(done), len(rels))
        else:
            interrupted = False
        wall = time.perf_counter() - t_start

        report = {"files": entries,
                  "summary": self._summary(entries, totals, wall, input_path, output_dir)}
        report["summary"]["interrupted"] = interrupted
        io.write_bytes(os.path.join(output_dir, REPORT_NAME),
                       (json.dumps(report, indent=2) + "\n").encode())
        if interrupted:
            raise PredictInterrupted(os.path.join(output_dir, REPORT_NAME), report)
        return report

    def _loop(self, root, rels, entries, pending, queue, drain, fail) -> None:
        for rel in rels:
            entry: dict[str, Any] = {"input": os.path.join(root, rel), "output": None,
                                     "status": None, "faces": 0}
            entries.append(entry)
            times = dict.fromkeys(STAGES, 0.0)
            try:
                decoded, faces, info = self._prepare(root, rel, times)
            except Exception as e:  # pylint: disable=broad-except
                job = _Job(rel, entry, None, [], times)
                fail(job, e)
                # Keeps the report in input order: finished after the images before it.
                pending.append(job)
                drain(False)
                continue
            entry.update(info)
            job = _Job(rel, entry, decoded, faces, times)
            pending.append(job)
            queue.extend((job, f) for f in faces)
            drain(False)
        drain(True)

    def _summary(self, entries, totals, wall, input_path, output_dir) -> dict[str, Any]:
        import jax
        counts = collections.Counter(e["status"] for e in entries)
        n_faces = sum(e["faces"] for e in entries)
        staged = sum(totals.values())
        compile_s = sum(self.model.buckets.values())
        return {
            "input": input_path, "output": output_dir, "files": len(entries),
            "counts": dict(sorted(counts.items())), "faces": n_faces,
            "seconds": round(wall, 3),
            "images_per_second": round(len(entries) / wall, 3) if wall > 0 else None,
            "ok_images_per_second": round(counts.get("ok", 0) / wall, 3) if wall > 0 else None,
            "faces_per_second": round(n_faces / wall, 3) if wall > 0 else None,
            # The same rate without the one-off compilations (a short run is dominated by
            # them; a long one converges to this).
            "images_per_second_after_compile": (
                round(len(entries) / (wall - compile_s), 3) if wall > compile_s else None),
            "stages": {k: {"seconds": round(v, 3),
                           "share": round(v / staged, 3) if staged > 0 else 0.0}
                       for k, v in totals.items()},
            "compile_seconds": {str(b): round(s, 3)
                                for b, s in sorted(self.model.buckets.items())},
            "load_seconds": round(self.model.load_seconds, 3),
            "batch_size": self.opts.batch_size,
            "device": str(jax.devices()[0].device_kind),
            "model": self.model.describe(),
        }


def predict(config, workdir: str, input_path: str, output_dir: str, *,
            detector: faces_lib.Detector | None = None, progress: bool = True
            ) -> dict[str, Any]:
    """``--mode=predict``: unmasks every face in ``input_path`` (an image, a folder or a
    glob) and writes the results and ``report.json`` under ``output_dir``."""
    if not os.path.exists(input_path) and not any(c in input_path for c in "*?["):
        raise FileNotFoundError(f"--input={input_path}: no such file or folder")
    predictor = Predictor(config, workdir, detector=detector, progress=progress)
    report = predictor.run(input_path, output_dir)
    s = report["summary"]
    counts = ", ".join(f"{v} {k}" for k, v in s["counts"].items())
    stages = ", ".join(f"{k} {v['seconds']:.2f}s" for k, v in s["stages"].items())
    print(f"predict: {s['files']} file(s) ({counts}), {s['faces']} face(s) in {s['seconds']:.1f}"
          f" s: {s['images_per_second']:.2f} images/s "
          f"({s['images_per_second_after_compile'] or 0:.2f} after compiling); {stages}; report: "
          f"{os.path.join(output_dir, REPORT_NAME)}")
    return report
