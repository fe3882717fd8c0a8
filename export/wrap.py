"""`hemaedge export bundle`: wrap an artifact made elsewhere (.tflite, .onnx, .engine) into a
verified bundle. The input contract is read from the artifact where possible (TFLite input
dtype and quantization, ONNX input size), the rest from the source model's sidecar or options;
with --source and --data the artifact is parity-checked like any export."""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from hemaedge.edge.cli_support import UserError
from hemaedge.edge.preprocess import InputContract

from hemaedge.export import parity as par
from hemaedge.export.bundle_writer import backend_for, write_export_bundle
from hemaedge.export.pipeline import make_row, measure_parity

logger = logging.getLogger(__name__)


def _artifact_io(path: Path, backend: str) -> tuple[int | None, tuple, tuple]:
    """(input size or None, (in dtype, scale, zp), (out dtype, scale, zp)) read from the file."""
    if backend == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        try:
            interp = Interpreter(model_path=str(path))
        except Exception as exc:
            raise UserError(f"{path}: not a loadable TFLite model ({exc})") from None
        res = []
        for det in (interp.get_input_details()[0], interp.get_output_details()[0]):
            scale, zp = det["quantization"]
            res.append((np.dtype(det["dtype"]).name, float(scale) if scale else None, int(zp) if scale else None))
        shape = interp.get_input_details()[0]["shape"]
        return int(shape[1]), res[0], res[1]
    if backend == "onnx":
        import onnx

        try:
            model = onnx.load(str(path))
        except Exception as exc:
            raise UserError(f"{path}: not a loadable ONNX model ({exc})") from None
        dims = model.graph.input[0].type.tensor_type.shape.dim
        size = dims[1].dim_value if len(dims) == 4 and dims[1].dim_value else None
        return size, ("float32", None, None), ("float32", None, None)
    return None, ("float32", None, None), ("float32", None, None)


def wrap_artifact(artifact, out, *, source_model=None, classes=None, preprocess=None, size=None,
                  parity_data_factory=None, max_drop: float = par.DEFAULT_MAX_DROP, overwrite=False, log=None) -> dict:
    log = log or logger.info  # messages go through logging (levels, -v/-q, run logs)
    artifact = Path(artifact)
    if not artifact.is_file():
        raise UserError(f"{artifact}: no such model file")
    backend = backend_for(artifact)
    a_size, (in_dt, in_s, in_zp), (out_dt, out_s, out_zp) = _artifact_io(artifact, backend)
    source = None
    names = [c.strip() for c in classes.split(",") if c.strip()] if isinstance(classes, str) else classes
    if source_model is not None:
        from hemaedge.export.source import load_source

        source = load_source(source_model, classes=names, preprocess=preprocess, size=size)
        base, names, kind, src_info = source.contract, source.classes, source.output_kind, source.source_info()
    else:
        if not names:
            raise UserError("pass --source MODEL.keras (with its sidecar) or --classes a,b,c")
        s = size or a_size
        if not s:
            raise UserError(f"{artifact}: input size unknown; pass --size")
        base = InputContract(size=int(s), preprocess=preprocess or "rgb")
        kind, src_info = "probabilities", {}
    if a_size and a_size != base.size:
        raise UserError(f"{artifact}: the artifact takes {a_size} px but the contract says {base.size}")
    from dataclasses import replace

    contract = replace(base, dtype=in_dt, quant_scale=in_s, quant_zero_point=in_zp)
    output = {"kind": kind, "dtype": out_dt, "quant_scale": out_s, "quant_zero_point": out_zp}
    pdata = parity_data_factory(names) if parity_data_factory else None
    splits, verdict = {}, par.judge({})
    if pdata is not None and source is None:
        verdict["reason"] = "parity needs --source (the model the artifact came from)"
    elif pdata is not None and backend in ("tflite", "onnx"):
        splits, verdict = measure_parity(source, artifact, contract, output, pdata, max_drop)
        verdict["data"] = pdata.describe()
        log(par.format_summary(splits, verdict))
    t0 = time.perf_counter()
    bundle = write_export_bundle(out, artifact, model_format=f"{backend}-wrapped", classes=names, contract=contract,
                                 output=output, source=src_info, settings={"wrapped": artifact.name},
                                 metrics=par.manifest_metrics(splits, verdict) if splits else {},
                                 validation=verdict, overwrite=overwrite)
    return make_row(f"{backend}-wrapped", verdict["status"], size=artifact.stat().st_size, splits=splits,
                    bundle=bundle, export_s=time.perf_counter() - t0, contract=contract, output=output)
