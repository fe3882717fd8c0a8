"""An UNTRAINED stand-in bundle for speed and memory runs of the edge runtime.

    python -m hemaedge.benchmarks.tools.edge_standin_model --out runs/standin-int8

Keras EfficientNetV2B0 (weights=None: random, nothing downloaded), 8 classes, 128 px, raw
0..255 input (the rescaling is inside the graph), converted to full-integer int8 TFLite with
30 BloodMNIST training crops as calibration data and wrapped in a bundle. It has the compute
and size of the planned default model but its predictions are meaningless: use it for latency,
throughput, memory and start-up figures only, until a trained bundle exists.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import click
import numpy as np

CLASSES = ["basophil", "eosinophil", "erythroblast", "immature_granulocyte", "lymphocyte", "monocyte",
           "neutrophil", "platelet"]


def build(out: Path, calibration: Path, n_calibration: int = 30) -> Path:
    import tensorflow as tf

    from hemaedge.edge.bundle import write_bundle
    from hemaedge.edge.preprocess import InputContract, read_image_rgb

    model = tf.keras.applications.EfficientNetV2B0(weights=None, input_shape=(128, 128, 3), classes=len(CLASSES),
                                                   include_preprocessing=True)
    files = sorted(calibration.glob("*/*.jpg"))
    files = files[:: max(1, len(files) // n_calibration)][:n_calibration]
    if not files:
        raise click.ClickException(f"{calibration}: no calibration images (expected CLASS/*.jpg)")

    def representative():
        for f in files:
            yield [read_image_rgb(f)[None].astype(np.float32)]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.int8
    conv.inference_output_type = tf.int8
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(conv.convert())
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path))
        (i_scale, i_zero), (o_scale, o_zero) = (it.get_input_details()[0]["quantization"],
                                                it.get_output_details()[0]["quantization"])
        return write_bundle(
            out, {"model.tflite": path}, model_file="model.tflite", backend="tflite", model_format="tflite-int8",
            classes=CLASSES, contract=InputContract(size=128, dtype="int8", quant_scale=float(i_scale),
                                                    quant_zero_point=int(i_zero)),
            output={"kind": "probabilities", "dtype": "int8", "quant_scale": float(o_scale),
                    "quant_zero_point": int(o_zero)},
            name="UNTRAINED-effnetv2b0-int8-standin", overwrite=True,
            extra={"note": "untrained stand-in for speed/memory runs only; predictions are meaningless"})


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default="runs/standin-int8", show_default=True)
@click.option("--calibration", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=lambda: os.environ.get("HEMAEDGE_BLOODMNIST128", "../shared/data/bloodmnist128") + "/train",
              show_default="../shared/data/bloodmnist128/train")
def main(out, calibration):
    """Build the untrained int8 stand-in bundle (speed/memory only)."""
    click.echo(f"wrote {build(out, calibration)}")


if __name__ == "__main__":
    main()
