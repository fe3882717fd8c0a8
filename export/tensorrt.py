"""TensorRT engines (fp16 / int8) from an ONNX model — built ON THE TARGET DEVICE.

An engine is tied to the TensorRT version and the GPU that built it, so this runs on the Jetson
(`hemaedge export tensorrt` there). Where `tensorrt` is not importable the command says so and
exits 2.

The int8 entropy calibrator is split in two: `CalibrationStream` (plain Python: batches through
`prepare_batch`, calibration cache read/write) is unit-tested anywhere; the thin
`IInt8EntropyCalibrator2` subclass made by `make_calibrator` only copies those batches to GPU
memory and exists only where TensorRT does.

The engine itself is built by the one builder, `hemaedge.edge.engine_build.build_engine`
(trtexec for fp16, the TensorRT Python API for int8).

STATUS: `CalibrationStream` is tested on x86 CPU, and fp16 through a stand-in trtexec. The
Python-API build and `make_calibrator` have NOT been run in this repository's CI (no TensorRT,
no GPU): see docs/export.md.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hemaedge.edge.atomic import atomic_write_bytes
from hemaedge.edge.cli_support import UserError
from hemaedge.edge.preprocess import InputContract, prepare_batch

PRECISIONS = ("fp16", "int8")


class CalibrationStream:
    """Fixed-size model-input batches for an int8 calibrator, plus its cache file.

    TensorRT asks for batches of exactly `batch_size`; a last partial batch is dropped (its
    images are a random subset anyway). When `cache_path` holds a cache, TensorRT reads it
    and skips calibration; after calibrating it hands back the cache, written atomically.
    """

    def __init__(self, images, contract: InputContract, batch_size: int = 8, cache_path=None):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if contract.dtype != "float32":
            raise ValueError("TensorRT calibrates a float32-input network; the contract must be float32")
        self.images = list(images)
        self.contract = contract
        self.batch_size = int(batch_size)
        self.cache_path = Path(cache_path) if cache_path else None
        self._next = 0

    def __len__(self) -> int:
        return len(self.images) // self.batch_size

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (self.batch_size, self.contract.size, self.contract.size, 3)

    @property
    def batch_nbytes(self) -> int:
        return int(np.prod(self.input_shape)) * 4

    def reset(self):
        self._next = 0

    def next_batch(self) -> np.ndarray | None:
        """The next (B, S, S, 3) float32 C-contiguous batch, or None when all are used."""
        if self._next >= len(self):
            return None
        s = self._next * self.batch_size
        self._next += 1
        return np.ascontiguousarray(prepare_batch(self.images[s:s + self.batch_size], self.contract), dtype=np.float32)

    def read_cache(self) -> bytes | None:
        if self.cache_path and self.cache_path.is_file() and self.cache_path.stat().st_size > 0:
            return self.cache_path.read_bytes()
        return None

    def write_cache(self, data) -> None:
        if not self.cache_path:
            return
        atomic_write_bytes(self.cache_path, bytes(data), mode=None)  # mode None: mkstemp's 0600, as before


def require_tensorrt():
    """The tensorrt module, or a UserError saying where engines are built."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        raise UserError("TensorRT is not installed here (python module 'tensorrt' not importable). Engines are "
                        "tied to the TensorRT version and GPU, so build them on the target device: on a Jetson "
                        "with JetPack (python3-libnvinfer) run `hemaedge export tensorrt MODEL.onnx` there.") from None
    return tensorrt


def _cuda():
    """(malloc, memcpy_htod, free) from cuda-python, or pycuda as a fallback."""
    try:
        from cuda import cudart  # cuda-python

        def malloc(n):
            err, ptr = cudart.cudaMalloc(n)
            if int(err) != 0:
                raise RuntimeError(f"cudaMalloc failed: {err}")
            return ptr

        def htod(ptr, arr):
            (err,) = cudart.cudaMemcpy(ptr, arr.ctypes.data, arr.nbytes, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice)
            if int(err) != 0:
                raise RuntimeError(f"cudaMemcpy failed: {err}")

        return malloc, htod, lambda p: cudart.cudaFree(p), (lambda p: int(p))
    except ImportError:
        pass
    try:
        import pycuda.autoinit  # noqa: F401
        import pycuda.driver as cuda
    except ImportError:
        raise UserError("int8 calibration needs cuda-python or pycuda on the device (pip install cuda-python)") from None
    return cuda.mem_alloc, cuda.memcpy_htod, lambda p: p.free(), (lambda p: int(p))


def make_calibrator(stream: CalibrationStream):
    """An IInt8EntropyCalibrator2 feeding `stream` to TensorRT (needs tensorrt + CUDA)."""
    trt = require_tensorrt()
    malloc, htod, free, addr = _cuda()

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            super().__init__()
            self.stream = stream
            self.device = malloc(stream.batch_nbytes)

        def get_batch_size(self):
            return self.stream.batch_size

        def get_batch(self, names):
            batch = self.stream.next_batch()
            if batch is None:
                return None
            htod(self.device, batch)
            return [addr(self.device)]

        def read_calibration_cache(self):
            return self.stream.read_cache()

        def write_calibration_cache(self, cache):
            self.stream.write_cache(cache)

        def __del__(self):
            try:
                free(self.device)
            except Exception:
                pass

    return EntropyCalibrator()


def build_engine(onnx_path, out_path, precision: str = "fp16", *, size: int, stream: CalibrationStream | None = None,
                 max_batch: int = 32, workspace_mb: int = 1024) -> dict:
    """ONNX -> serialized engine for batches 1..max_batch, by the one builder
    (`hemaedge.edge.engine_build.build_engine`); int8 gets the entropy calibrator over `stream`."""
    from hemaedge.edge.engine_build import build_engine as build

    if precision not in PRECISIONS:
        raise UserError(f"unknown TensorRT precision {precision!r}; expected one of {PRECISIONS}")
    calibrator = None
    if precision == "int8":
        if stream is None:
            raise UserError("int8 engines need calibration images (--calib-dir)")
        calibrator = make_calibrator(stream)
    settings = build(onnx_path, out_path, precision, size=size, max_batch=max_batch, calibrator=calibrator,
                     workspace_mb=workspace_mb)
    settings.update(quant=precision, calibration_cache=str(stream.cache_path) if stream and stream.cache_path else None)
    return settings


def require_builder(precision: str) -> None:
    """Fail early where no engine can be built: fp16 needs trtexec or TensorRT, int8 TensorRT itself."""
    from hemaedge.edge.engine_build import find_trtexec

    if precision == "int8" or find_trtexec() is None:
        require_tensorrt()
