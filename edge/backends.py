"""Inference back ends behind one interface: `load_backend(bundle, threads=...)` returns an
object whose `.predict(batch)` takes the exact input tensor (from `preprocess.prepare_batch`)
and returns float32 class probabilities (N, classes).

* LiteRT (`ai_edge_litert`, or `tflite_runtime` where that is what the device has),
* ONNX Runtime (CPU, or CUDA/TensorRT execution providers when present),
* TensorRT engines (Jetson; written against the TensorRT 10 Python API, import guarded).

Each back end resizes its input to the batch size where the model allows it (LiteRT
`resize_tensor_input`, ONNX dynamic axis), else runs the batch one image at a time. Integer
outputs are dequantized with the model's (or the manifest's) parameters, and logits are turned
into probabilities by softmax, as the manifest's `output` says.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemaedge.edge.bundle import Bundle
from hemaedge.edge.errors import BackendError
from hemaedge.edge.preprocess import dequantize, output_probabilities




def _finish(out: np.ndarray, output: dict, qparams: tuple | None) -> np.ndarray:
    """Raw model output -> float32 probabilities."""
    out = np.asarray(out)
    if out.dtype != np.float32 and np.issubdtype(out.dtype, np.integer):
        scale = output.get("quant_scale")
        zero = output.get("quant_zero_point")
        if (scale is None or zero is None) and qparams:
            scale, zero = qparams
        if not scale:
            raise BackendError("the model's output is integer but no quantization scale is known "
                               "(neither in the model nor in the manifest's output section)")
        out = dequantize(out, scale, zero)
    return output_probabilities(out.astype(np.float32).reshape(out.shape[0], -1), output)


class Backend:
    name = "backend"
    batch_dynamic = True

    def __init__(self, bundle_like):
        self.output = dict(getattr(bundle_like, "output", None) or {"kind": "probabilities"})
        self.num_classes = len(bundle_like.classes)

    fixed_batch: int | None = None  # the model's batch size when it cannot change
    # The largest batch one model call takes; a larger one runs in chunks. A resized LiteRT
    # interpreter keeps the arena of its largest batch: a frame of many cells with 4 views each
    # (image folders) grew the whole run's peak RSS from ~120 to ~145 MB (200 BCCD frames).
    max_batch: int | None = 16

    def predict(self, batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        if n == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        if self.max_batch and n > self.max_batch:  # bounded memory: the same answers, chunk by chunk
            return np.concatenate([self.predict(batch[i:i + self.max_batch]) for i in range(0, n, self.max_batch)])
        if self.batch_dynamic:
            try:
                return self._check(self._run(batch))
            except _FixedBatch:
                self.batch_dynamic = False
        # a fixed-batch model: run it chunk by chunk, padding the last chunk
        size = self.fixed_batch or 1
        outs = []
        for i in range(0, n, size):
            chunk = batch[i:i + size]
            k = len(chunk)
            if k < size:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - k, axis=0)])
            outs.append(self._run(chunk)[:k])
        return self._check(np.concatenate(outs))

    def _check(self, probs):
        if probs.shape[1] != self.num_classes:
            raise BackendError(f"the model gives {probs.shape[1]} outputs but the bundle lists "
                               f"{self.num_classes} classes: model and class list do not match")
        return probs

    def _run(self, batch):  # pragma: no cover - interface
        raise NotImplementedError


class _FixedBatch(Exception):
    pass


# ----------------------------------------------------------------------------- LiteRT


def _litert_interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter, "tflite-runtime"
    except ImportError:
        raise BackendError("no TFLite runtime: install the edge extra (pip install 'hemaedge[edge]', "
                           "which brings ai-edge-litert) or tflite-runtime") from None


class LiteRTBackend(Backend):
    name = "litert"

    def __init__(self, bundle_like, model_path: Path, threads: int | None = None, keep_tensors: bool = False):
        """`keep_tensors`: keep every intermediate tensor of the last batch readable (`tensor`), e.g. the
        classifier's input features for `train adapt` (more memory; the outputs are unchanged)."""
        super().__init__(bundle_like)
        Interpreter, self.runtime = _litert_interpreter_class()
        kept = {"experimental_preserve_all_tensors": True} if keep_tensors else {}
        if keep_tensors:
            self.max_batch = None  # `tensor` reads the last model call: it must have seen the whole batch
        try:
            with warnings.catch_warnings():  # LiteRT warns that keeping tensors is for debugging
                warnings.simplefilter("ignore", UserWarning)
                self.interp = Interpreter(model_path=str(model_path), num_threads=threads or None, **kept)
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"{model_path}: not a loadable TFLite model ({exc})") from None
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.batch_size = int(self.inp["shape"][0])
        sig = self.inp.get("shape_signature")
        self.batch_dynamic = sig is not None and len(sig) > 0 and int(sig[0]) == -1
        self.fixed_batch = None if self.batch_dynamic else self.batch_size
        q = self.out.get("quantization") or (0.0, 0)
        self.qparams = (float(q[0]), int(q[1])) if q and q[0] else None
        self.input_dtype = np.dtype(self.inp["dtype"])
        self.input_shape = tuple(int(v) for v in self.inp["shape"][1:])

    def _run(self, batch):
        if batch.dtype != self.input_dtype:
            raise BackendError(f"the bundle's input contract gives {batch.dtype} but the model takes "
                               f"{self.input_dtype}: bundle and model do not match")
        if tuple(batch.shape[1:]) != self.input_shape:
            raise BackendError(f"the bundle's input contract gives {tuple(batch.shape[1:])} but the model takes "
                               f"{self.input_shape}: bundle and model do not match")
        n = len(batch)
        if n != self.batch_size:
            if not self.batch_dynamic:
                raise _FixedBatch()
            self.interp.resize_tensor_input(self.inp["index"], [n, *self.input_shape])
            self.interp.allocate_tensors()
            self.inp = self.interp.get_input_details()[0]
            self.out = self.interp.get_output_details()[0]
            self.batch_size = n
        self.interp.set_tensor(self.inp["index"], batch)
        self.interp.invoke()
        return _finish(self.interp.get_tensor(self.out["index"]), self.output, self.qparams)

    def tensor(self, index: int) -> np.ndarray:
        """Tensor `index` of the model as computed for the last batch run (needs keep_tensors=True
        for an intermediate tensor: LiteRT reuses their memory otherwise)."""
        return np.array(self.interp.get_tensor(index))


# ----------------------------------------------------------------------------- ONNX Runtime


def _class_scores_output(outputs, num_classes: int) -> str:
    """The output that holds one score per class. Classifier graphs made from scikit-learn heads
    give (label, scores): the label (int64, one column) must not be read as scores."""
    def per_class(o):
        shape = o.shape or []
        return o.type in ("tensor(float)", "tensor(uint8)", "tensor(int8)") and len(shape) >= 2 \
            and shape[-1] == num_classes
    matching = [o for o in outputs if per_class(o)]
    return (matching[0] if matching else outputs[-1] if len(outputs) > 1 else outputs[0]).name


class OnnxBackend(Backend):
    name = "onnxruntime"

    def __init__(self, bundle_like, model_path: Path, threads: int | None = None, providers=None):
        super().__init__(bundle_like)
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendError("ONNX Runtime is not installed: pip install 'hemaedge[edge]'") from None
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        available = ort.get_available_providers()
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.sess = ort.InferenceSession(str(model_path), sess_options=opts, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad models
            raise BackendError(f"{model_path}: not a loadable ONNX model ({str(exc)[:300]})") from None
        inp = self.sess.get_inputs()[0]
        self.input_name = inp.name
        dim0 = inp.shape[0]
        self.batch_dynamic = not isinstance(dim0, int) or dim0 <= 0
        self.fixed_batch = dim0 if isinstance(dim0, int) and dim0 > 0 else None
        self.input_dtype = {"tensor(float)": np.float32, "tensor(uint8)": np.uint8,
                            "tensor(int8)": np.int8}.get(inp.type)
        self.input_shape = inp.shape[1:]
        self.output_name = _class_scores_output(self.sess.get_outputs(), self.num_classes)
        self.runtime = f"onnxruntime {ort.__version__} ({self.sess.get_providers()[0]})"

    def _run(self, batch):
        if self.input_dtype is not None and batch.dtype != self.input_dtype:
            raise BackendError(f"the bundle's input contract gives {batch.dtype} but the model takes "
                               f"{np.dtype(self.input_dtype)}: bundle and model do not match")
        for have, want in zip(batch.shape[1:], self.input_shape):
            if isinstance(want, int) and want > 0 and have != want:
                raise BackendError(f"the bundle's input contract gives shape {tuple(batch.shape[1:])} but the model "
                                   f"takes {tuple(self.input_shape)}: bundle and model do not match")
        if not self.batch_dynamic and len(batch) != self.fixed_batch:
            raise _FixedBatch()
        out = self.sess.run([self.output_name], {self.input_name: batch})[0]
        return _finish(out, self.output, None)


# ----------------------------------------------------------------------------- TensorRT


class TensorRTBackend(Backend):
    """A serialized TensorRT engine (.engine/.plan) built on this very device (engines are tied
    to the GPU and TensorRT version). Uses the TensorRT 10 tensor-name API and CUDA through
    cuda-python or PyCUDA. Not run on the machines this project was developed on (no GPU)."""

    name = "tensorrt"

    def __init__(self, bundle_like, model_path: Path, threads: int | None = None):
        super().__init__(bundle_like)
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendError("TensorRT is not importable here: TensorRT engines run only on an NVIDIA "
                               "device with TensorRT (JetPack's python3-libnvinfer); use a tflite or onnx "
                               "bundle on this machine") from None
        try:
            import pycuda.autoinit  # noqa: F401  (creates the CUDA context)
            import pycuda.driver as cuda
        except ImportError:
            raise BackendError("the TensorRT back end needs PyCUDA (pip install pycuda on the Jetson)") from None
        self.trt, self.cuda = trt, cuda
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        self.engine = runtime.deserialize_cuda_engine(Path(model_path).read_bytes())
        if self.engine is None:
            raise BackendError(f"{model_path}: TensorRT could not deserialize the engine (built for another "
                               "GPU or TensorRT version? rebuild it on this device with `hemaedge export tensorrt`)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.in_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.out_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        shape = tuple(self.engine.get_tensor_shape(self.in_name))
        self.batch_dynamic = shape[0] == -1
        self.fixed_batch = None if self.batch_dynamic else int(shape[0])
        self.input_shape = shape[1:]
        self.stream = cuda.Stream()
        self.runtime = f"tensorrt {trt.__version__}"

    def _run(self, batch):
        trt, cuda = self.trt, self.cuda
        n = len(batch)
        if self.batch_dynamic:
            self.context.set_input_shape(self.in_name, (n, *self.input_shape))
        elif n != self.fixed_batch:
            raise _FixedBatch()
        out_shape = tuple(self.context.get_tensor_shape(self.out_name))
        out_dtype = trt.nptype(self.engine.get_tensor_dtype(self.out_name))
        host_in = np.ascontiguousarray(batch)
        host_out = np.empty(out_shape, dtype=out_dtype)
        d_in = cuda.mem_alloc(host_in.nbytes)
        d_out = cuda.mem_alloc(host_out.nbytes)
        self.context.set_tensor_address(self.in_name, int(d_in))
        self.context.set_tensor_address(self.out_name, int(d_out))
        cuda.memcpy_htod_async(d_in, host_in, self.stream)
        self.context.execute_async_v3(self.stream.handle)
        cuda.memcpy_dtoh_async(host_out, d_out, self.stream)
        self.stream.synchronize()
        return _finish(host_out, self.output, None)


# ----------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class BackendInfo:
    """Everything hemaedge knows about one back end, in one place (store, presets, CLI use it)."""

    name: str
    suffixes: tuple  # model file suffixes, the first is the one a bundle uses
    modules: tuple  # groups of Python modules: one module of every group must be importable
    install_hint: str
    loader: type

    @property
    def model_file(self) -> str:
        """The model's file name inside a bundle."""
        return f"model{self.suffixes[0]}"

    def missing(self) -> list[str]:
        """The module groups that are not importable here (checked without importing them)."""
        return [" or ".join(group) for group in self.modules if not any(_importable(m) for m in group)]

    def available(self) -> str | None:
        """The modules that would run this back end here, or None when it cannot run."""
        if self.missing():
            return None
        return ", ".join(next(m for m in group if _importable(m)) for group in self.modules)


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: blocked via sys.modules[name] = None
        return False


REGISTRY = {
    "tflite": BackendInfo("tflite", (".tflite",), (("ai_edge_litert", "tflite_runtime"),),
                          "pip install 'hemaedge[edge]' (ai-edge-litert) or tflite-runtime", LiteRTBackend),
    "onnx": BackendInfo("onnx", (".onnx",), (("onnxruntime",),),
                        "pip install 'hemaedge[edge]' (onnxruntime)", OnnxBackend),
    "tensorrt": BackendInfo("tensorrt", (".engine", ".plan", ".trt"), (("tensorrt",), ("pycuda",)),
                            "TensorRT ships with JetPack on a Jetson (python3-libnvinfer), plus pip install pycuda",
                            TensorRTBackend),
}
BACKENDS = {name: info.loader for name, info in REGISTRY.items()}
EXTENSIONS = {suffix: name for name, info in REGISTRY.items() for suffix in info.suffixes}


def backend_info(name: str) -> BackendInfo:
    if name not in REGISTRY:
        raise BackendError(f"unknown back end {name!r}; expected one of {sorted(REGISTRY)}")
    return REGISTRY[name]


def backend_for_file(path) -> str:
    ext = Path(path).suffix.lower()
    if ext not in EXTENSIONS:
        raise BackendError(f"{path}: unknown model type {ext!r}; expected one of {sorted(EXTENSIONS)}")
    return EXTENSIONS[ext]


def load_backend(bundle: Bundle, threads: int | None = None) -> Backend:
    """The bundle's model, loaded in its back end, checked against the bundle's input contract."""
    cls = backend_info(bundle.backend).loader
    if threads is None:
        threads = os.cpu_count() or 1
    backend = cls(bundle, bundle.model_path, threads=threads)
    want = np.dtype(bundle.contract.dtype)
    have = getattr(backend, "input_dtype", None)
    if have is not None and np.dtype(have) != want:
        if hasattr(bundle, "meta"):  # a bundle: its manifest is wrong
            raise BackendError(f"bundle {bundle.root}: the input contract says {want} but the model takes "
                               f"{np.dtype(have)}; the manifest does not describe this model (re-export it)")
        raise BackendError(f"{bundle.model_path}: this model takes {np.dtype(have)} input but the options given "
                           f"for it say {want}; pass the matching input dtype (or use the model's bundle)")
    return backend
