"""Run an exported artifact the way a device does: `prepare_batch` + the runtime (LiteRT, ONNX
Runtime), and return dequantized class probabilities.

Used by the parity check. Kept separate from `hemaedge.edge` back ends on purpose: parity must
be measurable on the export machine before the edge runtime is involved, but it goes through
exactly the same preprocessing function.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hemaedge.edge.preprocess import InputContract, dequantize, output_probabilities, prepare_batch


def _finish(out: np.ndarray, output: dict) -> np.ndarray:
    out = np.asarray(out)
    if output.get("quant_scale") is not None and out.dtype != np.float32:
        out = dequantize(out, output["quant_scale"], output.get("quant_zero_point") or 0)
    return output_probabilities(out.astype(np.float32), output)


class TFLiteRunner:
    def __init__(self, path, num_threads: int = 2):
        from ai_edge_litert.interpreter import Interpreter

        self.interp = Interpreter(model_path=str(path), num_threads=num_threads)
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self._batch = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._batch != len(x):
            self.interp.resize_tensor_input(self.inp["index"], [len(x), *self.inp["shape"][1:]])
            self.interp.allocate_tensors()
            self._batch = len(x)
        self.interp.set_tensor(self.inp["index"], x.astype(self.inp["dtype"], copy=False))
        self.interp.invoke()
        return self.interp.get_tensor(self.out["index"]).copy()

    def input_quant(self) -> tuple[str, float | None, int | None]:
        dtype = np.dtype(self.inp["dtype"]).name
        scale, zp = self.inp["quantization"]
        return dtype, (float(scale) if scale else None), (int(zp) if scale else None)

    def output_quant(self) -> tuple[str, float | None, int | None]:
        dtype = np.dtype(self.out["dtype"]).name
        scale, zp = self.out["quantization"]
        return dtype, (float(scale) if scale else None), (int(zp) if scale else None)


class OnnxRunner:
    def __init__(self, path, num_threads: int = 2):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = num_threads
        self.sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = self.sess.get_inputs()[0].name
        outs = self.sess.get_outputs()
        # skl2onnx heads emit (label, probabilities): take the probability tensor.
        self.output_name = outs[-1].name if len(outs) > 1 else outs[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run([self.output_name], {self.input_name: x})[0]


def make_runner(path, backend: str, num_threads: int = 2):
    if backend == "tflite":
        return TFLiteRunner(path, num_threads)
    if backend == "onnx":
        return OnnxRunner(path, num_threads)
    raise ValueError(f"no runner for back end {backend!r} on this machine")


def predict_images(runner, images, contract: InputContract, output: dict, batch_size: int = 32,
                   progress: str | None = None) -> np.ndarray:
    """uint8 RGB images -> probabilities (N, C) through prepare_batch and the runner."""
    from tqdm import tqdm

    chunks = []
    starts = range(0, len(images), batch_size)
    for s in tqdm(starts, desc=progress, unit="batch", leave=False, disable=progress is None):
        chunks.append(_finish(runner(prepare_batch(images[s:s + batch_size], contract)), output))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def artifact_size(path) -> int:
    return Path(path).stat().st_size
