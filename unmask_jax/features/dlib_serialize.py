"""Reader for dlib's binary serialisation of DNN models (``dlib/serialize.h``).

dlib writes a network as nested objects, outermost (loss) layer first:

* an integer is a control byte (bit 7: negative, low 4 bits: byte count) followed by that
  many little-endian bytes of the absolute value;
* a float is two integers, mantissa (int64) then exponent (int16), value = m * 2**e, with
  exponents 32000/32001/32002 meaning +inf/-inf/nan;
* a string is its length (integer) and the raw bytes; a bool is the byte ``'0'`` or ``'1'``;
* a tensor is a version (1: floats in dlib's float encoding, dims n, k, nr, nc;
  2: dims n, k, nr, nc then raw little-endian float32) followed by the data;
* ``add_layer`` is a version (2, or 3 when its sub-network is the input layer), the
  sub-network, the layer details (a tag string such as ``con_4``, ``affine_``, ``relu_``,
  ``add_prev_``, ``max_pool_2``, ``avg_pool_2``, ``fc_2`` and that layer's fields), three
  bools and three tensors of training state;
* ``add_tag_layer`` / ``add_skip_layer`` are a version (1) and the sub-network only: the tag
  number is not stored.

Because sub-networks are written before a layer's own details, the details appear in input
-> output order, after a prefix of version numbers (one per layer, outermost first). This
module returns that flat sequence as :class:`DlibLayer` records; :mod:`dlib_resnet` (the
face-recognition ResNet, ``loss_metric``) and :mod:`dlib_mmod` (the MMOD face detector,
``loss_mmod``) turn it into networks.

Also read: ``bn_con2`` (batch norm in its trained form: gamma, beta, running means and
variances, eps; dlib folds it into an affine layer when it loads it for inference) and the
``input_rgb_image_pyramid`` input (means; version 2 also stores the pyramid paddings, version
1 implies 10 and 11).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

_FLOAT_INF, _FLOAT_NINF, _FLOAT_NAN = 32000, 32001, 32002


class DlibFormatError(ValueError):
    """The byte stream is not a dlib DNN file this reader understands."""


@dataclasses.dataclass
class DlibLayer:
    """One layer of a dlib network in input -> output order.

    kind: ``input_rgb_image_sized``, ``con``, ``affine``, ``relu``, ``add_prev``,
    ``max_pool``, ``avg_pool``, ``fc``, ``marker`` (a tag or skip wrapper, whose identity
    dlib does not store) or ``loss_metric``. ``fields`` holds the scalar settings,
    ``arrays`` the parameters as float32 numpy arrays.
    """

    kind: str
    fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    arrays: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


class DlibReader:
    """Sequential reader of dlib primitives over a bytes buffer."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def _take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise DlibFormatError(f"unexpected end of data at byte {self.pos} (wanted {n})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def peek_byte(self) -> int:
        if self.pos >= len(self.data):
            raise DlibFormatError(f"unexpected end of data at byte {self.pos}")
        return self.data[self.pos]

    def int(self) -> int:
        control = self._take(1)[0]
        size = control & 0x0F
        if size > 8 or control & 0x70:
            raise DlibFormatError(f"bad integer control byte 0x{control:02x} at {self.pos - 1}")
        value = int.from_bytes(self._take(size), "little") if size else 0
        return -value if control & 0x80 else value

    def float(self) -> float:
        if self.peek_byte() & 0x70:
            raise DlibFormatError(f"old ASCII float encoding at byte {self.pos} is not supported")
        mantissa = self.int()
        exponent = self.int()
        if exponent == _FLOAT_INF:
            return float("inf")
        if exponent == _FLOAT_NINF:
            return float("-inf")
        if exponent == _FLOAT_NAN:
            return float("nan")
        return float(np.ldexp(np.float64(mantissa), exponent))

    def bool(self) -> bool:
        ch = self._take(1)
        if ch not in (b"0", b"1"):
            raise DlibFormatError(f"bad bool byte {ch!r} at {self.pos - 1}")
        return ch == b"1"

    def string(self) -> str:
        n = self.int()
        if n < 0 or n > 4096:
            raise DlibFormatError(f"implausible string length {n} at {self.pos}")
        return self._take(n).decode("latin-1")

    def tensor(self) -> np.ndarray:
        """A resizable tensor, returned with shape (n, k, nr, nc)."""
        version = self.int()
        dims = [self.int() for _ in range(4)]
        if any(d < 0 for d in dims):
            raise DlibFormatError(f"negative tensor dimension {dims} at {self.pos}")
        count = int(np.prod(dims))
        if version == 2:
            raw = self._take(4 * count)
            arr = np.frombuffer(raw, dtype="<f4").astype(np.float32)
        elif version == 1:
            arr = np.array([self.float() for _ in range(count)], dtype=np.float32)
        else:
            raise DlibFormatError(f"unknown tensor version {version} at {self.pos}")
        return arr.reshape(dims)

    def alias_tensor(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != 1:
            raise DlibFormatError(f"unknown alias_tensor version {version} at {self.pos}")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]


def _read_multipliers(r: DlibReader, names: tuple[str, ...]) -> dict[str, float]:
    return {name: r.float() for name in names}


def _read_details(r: DlibReader) -> DlibLayer:
    """Reads one layer's details, starting at its tag string."""
    tag = r.string()
    if tag.startswith("con_"):
        if tag != "con_4":
            raise DlibFormatError(f"unsupported conv version {tag!r}")
        params = r.tensor()
        fields = {
            "num_filters": r.int(), "nr": r.int(), "nc": r.int(),
            "stride_y": r.int(), "stride_x": r.int(),
            "padding_y": r.int(), "padding_x": r.int(),
        }
        filt_shape = r.alias_tensor()
        bias_shape = r.alias_tensor()
        fields.update(_read_multipliers(r, (
            "learning_rate_multiplier", "weight_decay_multiplier",
            "bias_learning_rate_multiplier", "bias_weight_decay_multiplier")))
        flat = params.reshape(-1)
        n_filt = int(np.prod(filt_shape))
        n_bias = int(np.prod(bias_shape))
        if flat.size != n_filt + n_bias:
            raise DlibFormatError(f"con_ params size {flat.size} != {n_filt} + {n_bias}")
        arrays = {"filters": flat[:n_filt].reshape(filt_shape),
                  "biases": flat[n_filt:].reshape(-1)}
        return DlibLayer("con", fields, arrays)
    if tag in ("affine_", "affine_2"):
        params = r.tensor()
        g_shape = r.alias_tensor()
        b_shape = r.alias_tensor()
        mode = r.int()
        flat = params.reshape(-1)
        ng, nb = int(np.prod(g_shape)), int(np.prod(b_shape))
        if flat.size != ng + nb:
            raise DlibFormatError(f"affine_ params size {flat.size} != {ng} + {nb}")
        arrays = {"gamma": flat[:ng].reshape(g_shape), "beta": flat[ng:].reshape(b_shape)}
        return DlibLayer("affine", {"mode": mode}, arrays)
    if tag == "relu_":
        return DlibLayer("relu")
    if tag == "add_prev_":
        return DlibLayer("add_prev")
    if tag in ("max_pool_2", "avg_pool_2"):
        fields = {"nr": r.int(), "nc": r.int(), "stride_y": r.int(), "stride_x": r.int(),
                  "padding_y": r.int(), "padding_x": r.int()}
        return DlibLayer(tag[:-2], fields)
    if tag == "fc_2":
        fields = {"num_outputs": r.int(), "num_inputs": r.int()}
        params = r.tensor()
        w_shape = r.alias_tensor()
        b_shape = r.alias_tensor()
        fields["bias_mode"] = r.int()
        fields.update(_read_multipliers(r, (
            "learning_rate_multiplier", "weight_decay_multiplier",
            "bias_learning_rate_multiplier", "bias_weight_decay_multiplier")))
        flat = params.reshape(-1)
        nw = int(np.prod(w_shape))
        arrays = {"weights": flat[:nw].reshape(w_shape[0], -1)}
        # dlib's FC_HAS_BIAS is 0, FC_NO_BIAS is 1.
        if fields["bias_mode"] == 0:
            arrays["biases"] = flat[nw:nw + int(np.prod(b_shape))].reshape(-1)
        return DlibLayer("fc", fields, arrays)
    if tag == "bn_con2":
        params = r.tensor()
        g_shape = r.alias_tensor()
        b_shape = r.alias_tensor()
        r.tensor()  # means and inverse std devs of the last training batch
        r.tensor()
        running_means = r.tensor().reshape(-1)
        running_variances = r.tensor().reshape(-1)
        fields = {"num_updates": r.int(), "running_stats_window_size": r.int()}
        fields.update(_read_multipliers(r, (
            "learning_rate_multiplier", "weight_decay_multiplier",
            "bias_learning_rate_multiplier", "bias_weight_decay_multiplier")))
        fields["eps"] = r.float()
        flat = params.reshape(-1)
        ng, nb = int(np.prod(g_shape)), int(np.prod(b_shape))
        if flat.size != ng + nb or running_means.size != ng or running_variances.size != ng:
            raise DlibFormatError(f"bn_con2 sizes disagree: params {flat.size}, gamma {ng}, "
                                  f"beta {nb}, running stats {running_means.size}")
        arrays = {"gamma": flat[:ng], "beta": flat[ng:], "running_means": running_means,
                  "running_variances": running_variances}
        return DlibLayer("bn_con", fields, arrays)
    if tag in ("input_rgb_image_pyramid", "input_rgb_image_pyramid2"):
        fields = {"avg_red": r.float(), "avg_green": r.float(), "avg_blue": r.float(),
                  "pyramid_padding": 10, "pyramid_outer_padding": 11}
        if tag.endswith("2"):
            fields["pyramid_padding"] = r.int()
            fields["pyramid_outer_padding"] = r.int()
        return DlibLayer("input_rgb_image_pyramid", fields)
    if tag == "input_rgb_image_sized":
        fields = {"avg_red": r.float(), "avg_green": r.float(), "avg_blue": r.float(),
                  "nr": r.int(), "nc": r.int()}
        return DlibLayer("input_rgb_image_sized", fields)
    raise DlibFormatError(f"unsupported dlib layer tag {tag!r} at byte {r.pos}")


def _skip_training_state(r: DlibReader, version: int) -> None:
    for _ in range(3):
        r.bool()
    for _ in range(3):
        r.tensor()
    if version == 3:
        r.int()  # the input-facing add_layer also stores its sample expansion factor


def _read_loss(r: DlibReader) -> DlibLayer:
    """The loss layer's details: ``loss_metric_2`` (margin, distance threshold) or
    ``loss_mmod_`` with version-1 options (one detector window; NMS and ignore overlaps as
    (IoU, percent covered) thresholds)."""
    tag = r.string()
    if tag == "loss_metric_2":
        return DlibLayer("loss_metric", {"margin": r.float(), "distance_threshold": r.float()})
    if tag == "loss_mmod_":
        version = r.int()
        if version != 1:
            raise DlibFormatError(f"unsupported mmod_options version {version} (this reader "
                                  f"knows version 1: one detector window)")
        fields = {"detector_width": r.int(), "detector_height": r.int()}
        fields.update(_read_multipliers(r, (
            "loss_per_false_alarm", "loss_per_missed_target", "truth_match_iou_threshold",
            "nms_iou_thresh", "nms_percent_covered_thresh",
            "ignore_iou_thresh", "ignore_percent_covered_thresh")))
        return DlibLayer("loss_mmod", fields)
    raise DlibFormatError(f"unsupported loss layer {tag!r} (want loss_metric_2 or loss_mmod_)")


INPUT_KINDS = ("input_rgb_image_sized", "input_rgb_image_pyramid")


def read_dlib_network(data: bytes) -> list[DlibLayer]:
    """Parses a serialised network into layers, input first.

    The last element is the loss layer (``loss_metric``: fields margin / distance_threshold;
    ``loss_mmod``: the detector window and overlap thresholds). Raises
    :class:`DlibFormatError` when the stream does not parse to its end.
    """
    r = DlibReader(data)
    if r.int() != 1:
        raise DlibFormatError("expected add_loss_layer version 1 at the start")
    loss = _read_loss(r)

    # Prefix of versions, outermost first: 2 = add_layer, 1 = tag/skip, 3 = add_layer on input.
    versions: list[int] = []
    while True:
        v = r.int()
        versions.append(v)
        if v == 3:
            break
        if v not in (1, 2):
            raise DlibFormatError(f"unexpected layer version {v} at byte {r.pos}")
    layers = [_read_details(r)]          # the input layer
    if layers[0].kind not in INPUT_KINDS:
        raise DlibFormatError(f"unsupported input layer {layers[0].kind!r}")
    # Innermost add_layer (version 3) wraps the input: its details come right after.
    for v in reversed(versions):
        if v == 1:
            layers.append(DlibLayer("marker"))
            continue
        layers.append(_read_details(r))
        _skip_training_state(r, v)
    layers.append(loss)
    if r.pos != len(data):
        raise DlibFormatError(f"{len(data) - r.pos} trailing bytes after the network")
    return layers


def read_dlib_network_file(path: str) -> list[DlibLayer]:
    """Reads a dlib ``.dat`` network file (uncompressed)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:3] == b"BZh":
        raise DlibFormatError(f"{path} is bzip2-compressed: decompress it first (bunzip2)")
    return read_dlib_network(data)


def pack_int(value: int) -> bytes:
    """dlib's integer encoding (used by tests to build small files)."""
    neg = value < 0
    mag = -value if neg else value
    body = b""
    while mag:
        body += bytes([mag & 0xFF])
        mag >>= 8
    return bytes([len(body) | (0x80 if neg else 0)]) + body


def pack_float(value: float) -> bytes:
    """dlib's float_details encoding of a finite value: mantissa then exponent."""
    if value == 0.0:
        return pack_int(0) + pack_int(0)
    m, e = np.frexp(np.float64(value))
    mantissa = int(m * (1 << 53))
    exponent = int(e) - 53
    while mantissa and mantissa & 0xFF == 0:
        mantissa >>= 8
        exponent += 8
    return pack_int(mantissa) + pack_int(exponent)


def pack_string(s: str) -> bytes:
    return pack_int(len(s)) + s.encode("latin-1")


def pack_tensor(arr: np.ndarray, version: int = 2) -> bytes:
    """Serialises a float array as a dlib tensor with dims padded to (n, k, nr, nc)."""
    arr = np.asarray(arr, dtype=np.float32)
    dims = list(arr.shape) + [1] * (4 - arr.ndim)
    head = pack_int(version) + b"".join(pack_int(d) for d in dims)
    if version == 2:
        return head + arr.astype("<f4").tobytes()
    return head + b"".join(pack_float(float(v)) for v in arr.reshape(-1))


