"""Keras -> TFLite / LiteRT: fp32, fp16, dynamic-range int8 and full-integer int8.

Full-integer int8 is calibrated on images that went through `prepare_batch` with the model's
float contract, i.e. the same pixels the device feeds. Our models take raw 0..255 pixels and
rescale inside the graph, so a uint8 input quantizes to scale 1.0 / zero point 0 (exact) when
the calibration images span the full 0..255 range; whatever the converter really chose is read
back from the flatbuffer and written into the bundle's contract.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field

import numpy as np

from hemaedge.edge.cli_support import UserError
from hemaedge.edge.preprocess import InputContract

from hemaedge.export.calibration import calibration_batches

QUANT_MODES = ("fp32", "fp16", "dynamic", "int8", "int16x8")
INT8_IO = ("uint8", "int8", "float32")


@dataclass
class TFLiteResult:
    data: bytes
    contract: InputContract  # with dtype / quant params as the converted model expects
    output: dict  # {"kind", "dtype", "quant_scale", "quant_zero_point"}
    settings: dict = field(default_factory=dict)


def _quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    return tf


def _converter(model):
    tf = _quiet_tf()
    # Keras 3: from_keras_model traces the model's serving function with a free batch dim.
    return tf.lite.TFLiteConverter.from_keras_model(model)


def read_io(data: bytes) -> tuple[tuple, tuple]:
    """((in dtype, scale, zp), (out dtype, scale, zp)) of a TFLite flatbuffer, via LiteRT."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=data)
    res = []
    for det in (interp.get_input_details()[0], interp.get_output_details()[0]):
        scale, zp = det["quantization"]
        res.append((np.dtype(det["dtype"]).name, float(scale) if scale else None, int(zp) if scale else None))
    return res[0], res[1]


def _representative_dataset(calib_images, contract: InputContract):
    """The converter's calibration feed: one prepare_batch tensor per image (the device's pixels)."""
    images = list(calib_images)

    def representative():
        for x in calibration_batches(images, contract, batch_size=1):
            yield [x]

    return representative, len(images)


def convert_tflite(model, contract: InputContract, quant: str = "fp32", *, calib_images=None,
                   int8_io: str = "uint8", int8_output: str | None = None, output_kind: str = "probabilities",
                   denylisted_ops: list[str] | None = None, per_tensor: bool = False) -> TFLiteResult:
    """Convert a Keras model. `contract` is the float32 contract of the source model.

    int8: `calib_images` (uint8 RGB, any size) are required; `int8_io` is the input type,
    `int8_output` the output type (default: same as input); `denylisted_ops` (e.g. ["MEAN"])
    keeps those TFLite ops in float — a selective fallback, labelled as such in the settings.
    """
    if quant not in QUANT_MODES:
        raise UserError(f"unknown TFLite quantization {quant!r}; expected one of {QUANT_MODES}")
    tf = _quiet_tf()
    conv = _converter(model)
    settings = {"quant": quant, "converter": f"tensorflow {tf.__version__}"}
    if quant == "fp16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif quant == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif quant == "int16x8":
        # Integer-only with int16 activations and int8 weights (float I/O): a labelled fallback for
        # models whose int8 activations lose accuracy. Runs on TFLite's reference kernels (slow;
        # XNNPACK has no int16x8), so it is not in the default `export all` list.
        if not calib_images:
            raise UserError("int16x8 quantization needs calibration images (--calib-dir)")
        representative, n_calib = _representative_dataset(calib_images, contract)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        settings.update(calibration_images=n_calib, activations="int16", weights="int8")
    elif quant == "int8":
        if not calib_images:
            raise UserError("full-integer int8 needs calibration images (--calib-dir)")
        int8_output = int8_output or int8_io
        if int8_io not in INT8_IO or int8_output not in INT8_IO:
            raise UserError(f"--int8-io must be one of {INT8_IO}")
        representative, n_calib = _representative_dataset(calib_images, contract)
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = representative
        dtypes = {"uint8": tf.uint8, "int8": tf.int8, "float32": tf.float32}
        conv.inference_input_type = dtypes[int8_io]
        conv.inference_output_type = dtypes[int8_output]
        settings.update(int8_io=int8_io, int8_output=int8_output, calibration_images=n_calib,
                        weights="per-tensor" if per_tensor else "per-channel")
        if per_tensor:  # a comparison knob: TFLite's default (per-channel) is the better choice
            conv._experimental_disable_per_channel = True
        if denylisted_ops:
            # Selective float fallback: those ops run in float, so the model needs float kernels too.
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8, tf.lite.OpsSet.TFLITE_BUILTINS]
            debug_options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(denylisted_ops))
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=conv, debug_dataset=representative, debug_options=debug_options)
            data = debugger.get_nondebug_quantized_model()
            settings["float_fallback_ops"] = list(denylisted_ops)
        else:
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        if not (quant == "int8" and denylisted_ops):
            with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the traced signature
                data = conv.convert()
    except Exception as exc:  # converter errors are long; keep the first line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RuntimeError(f"TFLite {quant} conversion failed: {first}") from exc
    (in_dtype, in_scale, in_zp), (out_dtype, out_scale, out_zp) = read_io(data)
    from dataclasses import replace

    out_contract = replace(contract, dtype=in_dtype, quant_scale=in_scale if in_dtype != "float32" else None,
                           quant_zero_point=in_zp if in_dtype != "float32" else None)
    output = {"kind": output_kind, "dtype": out_dtype, "quant_scale": out_scale if out_dtype != "float32" else None,
              "quant_zero_point": out_zp if out_dtype != "float32" else None}
    return TFLiteResult(data=data, contract=out_contract, output=output, settings=settings)
