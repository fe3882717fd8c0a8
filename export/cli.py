"""`hemaedge export ...`: turn a trained model into verified bundles with measured parity.

Argument parsing only; the work is in tflite.py, onnx_export.py, onnx_head.py, tensorrt.py,
pipeline.py, parity.py and bundle_writer.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click

from hemaedge.edge.cli_support import FINITE_FLOAT, FiniteFloat, UserError, command_line, user_errors
from hemaedge.edge.errors import HemaedgeError

DEFAULT_DATA = "../shared/data/bloodmnist128"


def _source_options(f):
    f = click.option("--size", type=int, default=None, help="Input size check (read from the model itself).")(f)
    f = click.option("--preprocess", type=click.Choice(["rgb", "clahe", "otsu-mask", "masked-rgb"]), default=None,
                     help="Preprocessing mode if the model's sidecar JSON does not say.")(f)
    f = click.option("--classes", default=None,
                     help="Comma-separated class names if there is no sidecar <model>.json.")(f)
    return f


def _parity_options(f):
    f = click.option("--max-drop", type=FINITE_FLOAT, default=1.0, show_default=True,
                     help="Accuracy drop (points) beyond which an export is marked failed-validation.")(f)
    f = click.option("--sample-seed", type=int, default=0, show_default=True,
                     help="Seed of the --sample draw.")(f)
    f = click.option("--sample", "limit", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Quick runs: a random sample of N images per split, drawn with --sample-seed.")(f)
    f = click.option("--splits", default="val,test", show_default=True, help="Splits used for the parity check.")(f)
    f = click.option("--data", type=click.Path(path_type=Path), default=None,
                     help=f"Data set for the parity check (ImageFolder with val/ and test/, e.g. {DEFAULT_DATA}). "
                          "Without it the bundle is marked not-validated.")(f)
    return f


def _bundle_out_options(f):
    f = click.option("--force", is_flag=True, help="Replace an existing bundle folder.")(f)
    return click.option("--out", type=click.Path(path_type=Path), required=True, help="Bundle folder to write.")(f)


def _calib_options(f):
    f = click.option("--calib-count", type=click.IntRange(min=1), default=512, show_default=True,
                     help="Number of calibration images used (a calibration_data folder: the first N of its "
                          "class-interleaved order; a bare image folder: a seeded random subset).")(f)
    f = click.option("--calib-dir", type=click.Path(path_type=Path), default=Path("calibration_data"),
                     show_default=True, help="Calibration images (class folders of JPEGs).")(f)
    return f


def _load_source(model, classes, preprocess, size):
    from hemaedge.export.source import load_source

    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    return load_source(model, classes=names, preprocess=preprocess, size=size)


def _parity_data(data, source_classes, splits, limit, sample_seed=0):
    if data is None:
        return None
    from hemaedge.export.pipeline import ParityData

    return ParityData(data, source_classes, splits=tuple(s.strip() for s in splits.split(",") if s.strip()),
                      limit=limit, seed=sample_seed)


def _calib(calib_dir, calib_count, needed: bool):
    if not needed:
        return None, None
    from hemaedge.export.calibration import load_calibration

    images = load_calibration(calib_dir, calib_count)
    click.echo(f"calibration: {len(images)} images from {calib_dir}")
    return images, {"dir": str(calib_dir), "count": len(images), "requested": calib_count, "seed": 0}


def _load_key(ctx, param, value):
    """Read the signing key before any export work starts (a wrong path fails in a second, not after)."""
    if value is None:
        return None
    from hemaedge.edge.signing import read_signing_key

    try:
        return read_signing_key(value)
    except HemaedgeError as exc:
        raise click.BadParameter(str(exc)) from None


_sign_option = click.option(
    "--sign", "sign_key", type=click.Path(dir_okay=False), default=None, callback=_load_key, metavar="KEY",
    help="Sign the bundle with this private key (from `hemaedge keys new`): the signature covers the "
         "manifest and every file's checksum; devices with `--require-signature` accept only signed bundles.")


def _sign(bundle, key) -> None:
    if key is not None and bundle:
        from hemaedge.edge.signing import sign_bundle

        sign_bundle(bundle, key)
        click.echo(f"signed: {bundle} (key {key.key_id})")


def _finish(row: dict, key=None):
    _sign(row.get("bundle"), key)
    click.echo(f"bundle: {row['bundle']} ({row['size_mb']} MB, status {row['status']})")
    if row["status"] == "failed-validation":
        click.echo("Error: the export is marked failed-validation in its manifest (see the parity lines above); "
                   "raise --max-drop only if you accept the loss.", err=True)
        sys.exit(1)


# int8 formats (TFLite full-integer, ONNX QDQ): see export/bounded_logits.py
_bound_logits_option = click.option(
    "--bound-logits/--no-bound-logits", default=True, show_default=True,
    help="int8: end in shifted logits clipped to +-L (L from the calibration images) with the softmax on "
         "the device, so int8 keeps the resolution that decides the class (see docs/export.md). Only for "
         "models ending in Dense+softmax.")


@click.group()
def export():
    """Export and quantize models (TFLite, ONNX, TensorRT) into verified bundles with parity checks.

    \b
    Every export is run through the device's preprocessing (prepare_batch) and runtime on the
    val/test splits and compared with the source model (agreement, accuracy, macro-F1 deltas).
    """


@export.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--quant", type=click.Choice(["fp32", "fp16", "dynamic", "int8", "int16x8"]), default="fp32",
              show_default=True, help="int16x8: int16 activations, int8 weights, float I/O (slow reference kernels).")
@click.option("--int8-io", type=click.Choice(["uint8", "int8", "float32"]), default="uint8", show_default=True,
              help="Input type of a full-integer model.")
@click.option("--int8-output", type=click.Choice(["uint8", "int8", "float32"]), default=None,
              help="Output type of a full-integer model (default: same as --int8-io).")
@click.option("--float-fallback-ops", default=None,
              help="int8 only: comma-separated TFLite ops kept in float (selective fallback, e.g. "
                   "MEAN,FULLY_CONNECTED,SOFTMAX); the bundle is labelled tflite-int8-mixed, float I/O.")
@click.option("--per-tensor", is_flag=True,
              help="int8 only: per-tensor instead of per-channel weight quantization (for comparison).")
@_bound_logits_option
@_calib_options
@_parity_options
@_source_options
@_bundle_out_options
@_sign_option
@user_errors
def tflite(model, quant, int8_io, int8_output, float_fallback_ops, per_tensor, bound_logits, calib_dir, calib_count,
           data, splits, limit, sample_seed, max_drop, classes, preprocess, size, out, force, sign_key):
    """Keras MODEL -> TFLite bundle (fp32, fp16, dynamic-range or full-integer int8)."""
    from hemaedge.export.pipeline import export_one
    from hemaedge.export.tflite import convert_tflite  # noqa: F401  (fail early if TF is missing)

    source = _load_source(model, classes, preprocess, size)
    images, info = _calib(calib_dir, calib_count, quant in ("int8", "int16x8"))
    ops = [o.strip().upper() for o in float_fallback_ops.split(",")] if float_fallback_ops else None
    if quant == "int8" and ops:
        fmt = "tflite-int8-mixed"  # float I/O and the listed ops in float: labelled as such
    elif quant == "int8" and int8_io == "float32":
        fmt = "tflite-int8-floatio"
    else:
        fmt = f"tflite-{quant}"
    row = _run_one(export_one, fmt, source, out, data, splits, limit, sample_seed, max_drop, images, info, force,
                   int8_io=int8_io, float_fallback_ops=ops, int8_output=int8_output, per_tensor=per_tensor,
                   bound_logits=bound_logits)
    _finish(row, sign_key)


def _run_one(export_one, fmt, source, out, data, splits, limit, sample_seed, max_drop, images, info, force, **kw):
    return export_one(fmt, source, out, parity_data=_parity_data(data, source.classes, splits, limit, sample_seed),
                      max_drop=max_drop, calib_images=images, calib_info=info, overwrite=force, **kw)


@export.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset.")
@click.option("--quantize-int8", is_flag=True, help="Static int8 QDQ quantization with ONNX Runtime.")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="ONNX Runtime calibration method for --quantize-int8.")
@_bound_logits_option
@_calib_options
@_parity_options
@_source_options
@_bundle_out_options
@_sign_option
@user_errors
def onnx(model, opset, quantize_int8, calib_method, bound_logits, calib_dir, calib_count, data, splits, limit, sample_seed,
         max_drop, classes, preprocess, size, out, force, sign_key):
    """Keras MODEL -> ONNX bundle (tf2onnx), optionally int8 QDQ."""
    from hemaedge.export.pipeline import export_one

    source = _load_source(model, classes, preprocess, size)
    images, info = _calib(calib_dir, calib_count, quantize_int8)
    row = _run_one(export_one, "onnx-int8" if quantize_int8 else "onnx-fp32", source, out, data, splits, limit, sample_seed,
                   max_drop, images, info, force, opset=opset, onnx_calib_method=calib_method,
                   bound_logits=bound_logits)
    _finish(row, sign_key)


@export.command("onnx-head")
@click.argument("head", type=click.Path(path_type=Path))
@click.option("--backbone", type=click.Path(path_type=Path), default=None,
              help="Keras feature extractor (images -> features): merged with the head into one ONNX bundle.")
@click.option("--opset", type=int, default=17, show_default=True)
@_parity_options
@_source_options
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="With --backbone: bundle folder; without: the head's .onnx file.")
@click.option("--force", is_flag=True, help="Replace an existing output.")
@_sign_option
@user_errors
def onnx_head(head, backbone, opset, data, splits, limit, sample_seed, max_drop, classes, preprocess, size, out, force, sign_key):
    """scikit-learn HEAD (.skops: SVM, KNN, RF, pipelines) -> ONNX (skl2onnx; a distance-weighted KNN
    gets hemaedge's own graph); no pickle on the device.

    With --backbone the feature extractor and the head become one ONNX graph (image -> class
    probabilities) in a verified bundle, parity-checked against backbone + scikit-learn.
    """
    from hemaedge.export import onnx_head as oh

    names = [c.strip() for c in classes.split(",") if c.strip()] if classes else None
    if backbone is None and sign_key is not None:
        raise UserError("--sign signs bundles; without --backbone this writes a bare .onnx head, not a bundle")
    if backbone is None:
        path = oh.export_head_file(head, out, opset=opset, overwrite=force)
        click.echo(f"wrote {path}")
        return
    source = oh.load_hybrid_source(backbone, head, classes=names, preprocess=preprocess, size=size)
    row = oh.export_hybrid_bundle(source, out, opset=opset, parity_data=_parity_data(data, source.classes, splits, limit, sample_seed),
                                  max_drop=max_drop, overwrite=force)
    _finish(row, sign_key)


@export.command()
@click.argument("onnx_model", type=click.Path(path_type=Path))
@click.option("--precision", type=click.Choice(["fp16", "int8"]), default="fp16", show_default=True)
@_calib_options
@click.option("--batch", type=int, default=8, show_default=True, help="Calibration batch size.")
@click.option("--max-batch", type=int, default=32, show_default=True, help="Largest batch the engine accepts.")
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Calibration cache file (read if present, written after calibrating).")
@_bundle_out_options
@_sign_option
@user_errors
def tensorrt(onnx_model, precision, calib_dir, calib_count, batch, max_batch, cache, out, force, sign_key):
    """ONNX bundle (or .onnx next to its bundle manifest) -> TensorRT engine bundle. Run ON THE DEVICE."""
    from hemaedge.export import tensorrt as trtx
    from hemaedge.export.trt_bundle import export_tensorrt_bundle

    trtx.require_builder(precision)
    images, info = _calib(calib_dir, calib_count, precision == "int8")
    path = export_tensorrt_bundle(onnx_model, out, precision, calib_images=images, calib_info=info,
                                  batch=batch, max_batch=max_batch, cache=cache, overwrite=force)
    _sign(path, sign_key)
    click.echo(f"bundle: {path} (not parity-checked here: run `hemaedge edge verify` and the bench on the device)")


@export.command("all")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--formats", default=None,
              help="Comma-separated formats (default: every format of the table except opt-in ones; "
                   "see `hemaedge export formats`).")
@click.option("--opset", type=int, default=17, show_default=True)
@_bound_logits_option
@_calib_options
@_parity_options
@_source_options
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Folder for one bundle per format.")
@click.option("--table", type=click.Path(path_type=Path), default=None,
              help="Table stem (default benchmarks/results/export_<model>): writes .md and .json.")
@click.option("--force", is_flag=True, help="Replace existing bundle folders.")
@_sign_option
@user_errors
def all_formats(model, formats, opset, bound_logits, calib_dir, calib_count, data, splits, limit, sample_seed, max_drop, classes,
                preprocess, size, out, table, force, sign_key):
    """Every format with parity for each, and the export table (format, status, size, accuracy, delta, agreement)."""
    from hemaedge.export import report
    from hemaedge.export.pipeline import DEFAULT_FORMATS, FORMATS, NEEDS_CALIBRATION, export_all

    fmts = [f.strip() for f in formats.split(",") if f.strip()] if formats is not None else list(DEFAULT_FORMATS)
    unknown = [f for f in fmts if f not in FORMATS]
    if unknown or not fmts:
        raise UserError(f"unknown formats {unknown}; choose from {list(FORMATS)}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; it must be a folder (one bundle per format goes inside)")
    source = _load_source(model, classes, preprocess, size)
    try:
        images, info = _calib(calib_dir, calib_count, any(f in NEEDS_CALIBRATION for f in fmts))
    except HemaedgeError as exc:  # int8 rows will say failed-to-export; the others still run
        click.echo(f"warning: {exc}", err=True)
        images, info = None, None
    pdata = _parity_data(data, source.classes, splits, limit, sample_seed)
    stem = table or Path("benchmarks/results") / f"export_{source.name}"
    meta = report.base_meta(source.name, command_line())
    meta.update(source_sha256=source.sha256, data=pdata.describe() if pdata else None, calibration=info,
                max_drop_points=max_drop, versions=_versions())
    rows = export_all(source, out, fmts, parity_data=pdata, max_drop=max_drop, calib_images=images,
                      calib_info=info, overwrite=force, opset=opset, bound_logits=bound_logits,
                      on_row=lambda r: report.write_table(stem, r, meta))
    md, _ = report.write_table(stem, rows, meta)
    for row in rows:
        _sign(row.get("bundle"), sign_key)
    click.echo(Path(md).read_text())
    click.echo(f"table: {md} (+ .json)")
    if not any(row.get("bundle") for row in rows):
        failed = "; ".join(f"{r['format']}: {r.get('error') or r['status']}" for r in rows)
        click.echo(f"Error: no format was exported ({failed[:800]})", err=True)
        sys.exit(1)


@export.command("formats")
def formats_cmd():
    """List the export formats: back end, file suffix, whether int8 calibration images are needed."""
    from hemaedge.export.pipeline import FORMAT_TABLE

    rows = [("FORMAT", "BACKEND", "SUFFIX", "CALIBRATION", "BOUNDED LOGITS", "IN `all`", "NOTE")]
    for f in FORMAT_TABLE:
        rows.append((f.name, f.backend, f.suffix, "yes" if f.needs_calibration else "-",
                     "yes" if f.bounded_logits else "-", "yes" if f.default else "opt-in", f.note))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


def _versions() -> str:
    import importlib.metadata as md

    out = []
    for pkg in ("tensorflow-cpu", "tensorflow", "keras", "ai-edge-litert", "onnxruntime", "tf2onnx"):
        try:
            out.append(f"{pkg} {md.version(pkg)}")
        except md.PackageNotFoundError:
            continue
    return ", ".join(out)


@export.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--source", "source_model", type=click.Path(path_type=Path), default=None,
              help="The Keras model the artifact came from (classes/contract from its sidecar; parity against it).")
@_parity_options
@_source_options
@_bundle_out_options
@_sign_option
@user_errors
def bundle(artifact, source_model, data, splits, limit, sample_seed, max_drop, classes, preprocess, size, out, force, sign_key):
    """Wrap an existing ARTIFACT (.tflite, .onnx, .engine) into a verified bundle."""
    from hemaedge.export.wrap import wrap_artifact

    row = wrap_artifact(artifact, out, source_model=source_model, classes=classes, preprocess=preprocess, size=size,
                        parity_data_factory=lambda names: _parity_data(data, names, splits, limit, sample_seed),
                        max_drop=max_drop, overwrite=force)
    _finish(row, sign_key)


@export.command("rbc-layer")
@click.argument("bundle_dir", metavar="BUNDLE", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--chula", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Chula RBC-12 folder (images/, labels/): the red-cell model's training microscope.")
@click.option("--feature", "features", multiple=True, default=("relative_area", "relative_length"),
              show_default=True, help="Size features of the layer (edge/rbc_layer.py FEATURES); repeat the option.")
@click.option("--c", "c", type=FiniteFloat(min=1e-4), default=1.0, show_default=True,
              help="Inverse regularisation strength of the logistic layer.")
@click.option("--split", type=click.Choice(["train", "val"]), default="train", show_default=True,
              help="Frames of the `hemaedge data rbc-crops` frame split to fit on (never test).")
@click.option("--threads", type=click.IntRange(1), default=None, help="Inference threads.")
@user_errors
def rbc_layer(bundle_dir, chula, features, c, split, threads):
    """Fit a red-cell BUNDLE's size layer: a logistic layer over the model's probabilities and each
    cell's size relative to its field's median red cell, on the labelled points of Chula frames through
    the device path; writes plain numbers into its manifest's red_cells.layer (the device applies it).

    \b
    Example:
      hemaedge export rbc-layer src/hemaedge/models/rbc --chula ../shared/data/chula_rbc12
    """
    from hemaedge.export.rbc_layer import write_layer

    layer = write_layer(bundle_dir, chula, features, c, split, threads)
    click.echo(f"{bundle_dir}: size layer over {', '.join(layer['features'])} (C = {c:g}) fitted on "
               f"{layer['points']} labelled points of Chula {split} frames")


@export.command("rbc-ood")
@click.argument("bundle_dir", metavar="BUNDLE", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--chula", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Chula RBC-12 folder (images/, labels/): the red-cell model's training microscope.")
@click.option("--split", type=click.Choice(["val", "train"]), default="val", show_default=True,
              help="Frames of the `hemaedge data rbc-crops` frame split to fit on (never test).")
@click.option("--threads", type=click.IntRange(1), default=None, help="Inference threads.")
@user_errors
def rbc_ood(bundle_dir, chula, split, threads):
    """Refit a red-cell BUNDLE's OOD limit on the cells the device classifies (detected whole cells of
    held-out Chula frames, int8 bundle) instead of labelled crops; rewrites its manifest's domain.ood.

    \b
    Example:
      hemaedge export rbc-ood src/hemaedge/models/rbc --chula ../shared/data/chula_rbc12
    """
    from hemaedge.edge.preprocess import read_image_rgb
    from hemaedge.export.rbc_ood import refit_red_cell_ood
    from hemaedge.train.rbc_crops import read_chula, split_frames

    frames = read_chula(chula)
    splits = split_frames([f.name for f in frames])
    images = (read_image_rgb(f.image) for f in frames if splits[f.name] == split)
    out = refit_red_cell_ood(bundle_dir, images, f"whole detected red cells of Chula RBC-12 {split} frames "
                                                 "(frame split of `hemaedge data rbc-crops`, seed 42), device path",
                             threads=threads)
    b, a = out["before"], out["after"]
    click.echo(f"{bundle_dir}: OOD limit {b.get('limit')} (mean {b.get('val_mean')}) -> {a['limit']} "
               f"(mean {a['val_mean']}, {a['cells']} whole detected red cells, groups of {a['group']})")
