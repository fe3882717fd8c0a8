"""Keras -> ONNX (tf2onnx), and ONNX Runtime static int8 quantization (QDQ).

The ONNX model keeps the source model's float32 raw-pixel input named "input"; QDQ
quantization inserts Quantize/Dequantize pairs inside the graph, so the input contract stays
float32 and a device feeds it exactly what `prepare_batch` makes.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

from hemaedge.edge.cli_support import UserError
from hemaedge.edge.preprocess import InputContract

from hemaedge.export.calibration import calibration_batches

DEFAULT_OPSET = 17
INPUT_NAME = "input"


def keras_to_onnx(model, contract: InputContract, opset: int = DEFAULT_OPSET) -> bytes:
    """Serialized ONNX model with input "input" (N, S, S, 3) float32."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((None, contract.size, contract.size, 3), tf.float32, name=INPUT_NAME),)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=int(opset))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise RuntimeError(f"tf2onnx conversion (opset {opset}) failed: {first}") from exc
    return proto.SerializeToString()


class _Reader:
    """onnxruntime CalibrationDataReader over prepare_batch tensors."""

    def __init__(self, images, contract, input_name, batch_size=1):
        self._it = calibration_batches(list(images), contract, batch_size)
        self.input_name = input_name

    def get_next(self):
        x = next(self._it, None)
        return None if x is None else {self.input_name: x}

    def rewind(self):  # not needed by the MinMax/Entropy calibrators in one pass
        pass


def quantize_onnx_int8(onnx_bytes: bytes, contract: InputContract, calib_images, *,
                       per_channel: bool = True, method: str = "minmax") -> tuple[bytes, dict]:
    """Static QDQ int8 (weights int8 per channel, activations uint8) calibrated on calib_images."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    images = list(calib_images or [])
    if not images:
        raise UserError("ONNX int8 quantization needs calibration images (--calib-dir)")
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise UserError(f"unknown calibration method {method!r}; expected one of {sorted(methods)}")
    input_name = onnx.load_from_string(onnx_bytes).graph.input[0].name
    with tempfile.TemporaryDirectory(prefix="hemaedge-qdq-") as tmp:
        src, pre, dst = (Path(tmp) / n for n in ("model.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(onnx_bytes)
        try:  # shape inference + graph optimisation, as onnxruntime recommends before quantizing
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:
            pre = src
        quantize_static(str(pre), str(dst), _Reader(images, contract, input_name),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method],
                        # 7-bit weights: onnxruntime's uint8 x int8 kernels saturate on x86 CPUs with AVX2 but
                        # no VNNI (its docs: reduce_range); without it a tiny model agreed 0.82 with float on an AVX2 AMD EPYC
                        reduce_range=True)
        data = dst.read_bytes()
    import onnxruntime

    settings = {"quant": "int8-qdq", "per_channel": per_channel, "calibration_method": method,
                "calibration_images": len(images), "activations": "uint8", "weights": "int8", "reduce_range": True,
                "quantizer": f"onnxruntime {onnxruntime.__version__}"}
    return data, settings


def onnx_opset(onnx_bytes: bytes) -> int:
    import onnx

    model = onnx.load_from_string(onnx_bytes)
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
