"""Which "external data" files an ONNX model pulls its weights from, read without the onnx package.

An ONNX model may keep tensors outside the .onnx file (TensorProto.data_location = EXTERNAL,
with an `external_data` entry "location" naming a file beside the model). ONNX Runtime opens
those files when it loads the model, so a bundle must list and checksum every one of them, or
weights could be swapped without any checksum noticing. The device has only onnxruntime (no
`onnx` package), so this walks the protobuf wire format over the few message fields that can
hold tensors; the bulk tensor bytes are skipped, never copied.
"""
from __future__ import annotations

from hemaedge.edge.errors import BundleError

# Field numbers from onnx.proto (stable since ONNX 1.0): message -> {field: child message}
_MODEL = {7: "graph", 25: "function", 20: "training"}
_CHILDREN = {
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node"},
    "training": {1: "graph", 2: "graph"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {13: "entry"},
    "entry": {},
}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _EXTERNAL = 13, 14, 1
_MAX_DEPTH = 64


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or malformed varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(data: memoryview):
    """(field number, wire type, value) of one message; value is an int or a memoryview."""
    pos = 0
    while pos < len(data):
        tag, pos = _varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = None, pos + 8
        elif wire == 5:
            value, pos = None, pos + 4
        elif wire == 2:
            length, pos = _varint(data, pos)
            value, pos = data[pos:pos + length], pos + length
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated message")
        yield number, wire, value


def _walk(data: memoryview, kind: str, depth: int, found: list) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError("graphs nested too deeply")
    children = _MODEL if kind == "model" else _CHILDREN[kind]
    external, locations = False, []
    for number, wire, value in _fields(data):
        if kind == "tensor" and number == _TENSOR_DATA_LOCATION and wire == 0:
            external = value == _EXTERNAL
        elif kind == "tensor" and number == _TENSOR_EXTERNAL_DATA and wire == 2:
            key = val = None
            for n, w, v in _fields(value):
                if w == 2 and n == 1:
                    key = bytes(v).decode("utf-8", "replace")
                elif w == 2 and n == 2:
                    val = bytes(v).decode("utf-8", "replace")
            if key == "location":
                locations.append(val or "")
        elif number in children and wire == 2:
            _walk(value, children[number], depth + 1, found)
    if external:
        found.append(locations[0] if locations else "")


def external_data_locations(model_bytes: bytes) -> list[str]:
    """The external data files an ONNX model refers to ('' for a reference without a location)."""
    found: list[str] = []
    try:
        _walk(memoryview(model_bytes), "model", 0, found)
    except ValueError as exc:
        raise BundleError(f"not a readable ONNX model ({exc})") from None
    return sorted(set(found))
