"""`hemaedge edge run` and `hemaedge edge verify`: argument parsing only; the work is done by
sources, segment, backends, pipeline and recorder."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import click

from hemaedge.edge.cli_support import FiniteFloat, UserError, log_to_file, user_errors
from hemaedge.edge.segment import CROP_MODES, DEFAULT_CELL_FRACTION, DEFAULT_RBC_FACTOR, METHODS


class OodThreshold(click.ParamType):
    """--ood-threshold: 'auto' (the bundle's), 'off', or a finite number >= 0 (`identify.parse_ood_threshold`)."""

    name = "auto|off|NUMBER"

    def convert(self, value, param, ctx):
        from hemaedge.edge.errors import UsageError
        from hemaedge.edge.identify import parse_ood_threshold

        if isinstance(value, float) or str(value).strip().lower() in ("auto", "off"):
            return value if isinstance(value, float) else str(value).strip().lower()
        try:
            return parse_ood_threshold(value)
        except UsageError as exc:
            self.fail(str(exc), param, ctx)


OOD_THRESHOLD = OodThreshold()

logger = logging.getLogger(__name__)


def _contract(input_size, preprocess, scaling, dtype, quant):
    from hemaedge.edge.preprocess import InputContract

    scale, zero = (None, None)
    if quant:
        try:
            scale, zero = float(quant.split(",")[0]), int(quant.split(",")[1])
        except (ValueError, IndexError):
            raise UserError(f"--input-quant {quant!r}: expected SCALE,ZERO_POINT (e.g. 1.0,-128)") from None
        if not (math.isfinite(scale) and scale > 0):
            raise UserError(f"--input-quant {quant!r}: the scale must be a finite number above 0")
    try:
        return InputContract(size=input_size, preprocess=preprocess, scaling=scaling, dtype=dtype,
                             quant_scale=scale, quant_zero_point=zero)
    except ValueError as exc:
        raise UserError(str(exc)) from None


@click.command()
@click.option("--source", "-s", required=True,
              help="Image file, folder or glob ('frames/*.png'); video file; camera index (0), /dev/videoN "
                   "or GStreamer pipeline ('nvarguscamerasrc ! ... ! appsink'); or 'picamera2[:WxH]'.")
@click.option("--bundle", "-b", type=click.Path(path_type=Path),
              help="Model bundle folder (default: the active model of the device store, else the packaged default).")
@click.option("--model", type=click.Path(path_type=Path), help="A bare .tflite/.onnx/.engine file instead of a bundle.")
@click.option("--classes", help="With --model: class names 'a,b,c' or a file with one per line.")
@click.option("--input-size", default=128, show_default=True, help="With --model: input side in pixels.")
@click.option("--preprocess", default="rgb", show_default=True, type=click.Choice(["rgb", "clahe", "otsu-mask", "masked-rgb"]),
              help="With --model: preprocessing.")
@click.option("--scaling", default="raw", show_default=True, type=click.Choice(["raw", "unit", "lite", "imagenet", "caffe"]),
              help="With --model: input scaling ('raw' = 0..255 floats, the model scales inside).")
@click.option("--input-dtype", default="float32", show_default=True, type=click.Choice(["float32", "uint8", "int8"]),
              help="With --model: input dtype.")
@click.option("--input-quant", help="With --model and an integer input: SCALE,ZERO_POINT.")
@click.option("--output-kind", default="probabilities", show_default=True, type=click.Choice(["probabilities", "logits"]),
              help="With --model: what the model outputs.")
@click.option("--out", "-o", type=click.Path(path_type=Path),
              help="Folder for frames.jsonl/csv, cells.csv, summary.json, counts.csv, run.log "
                   "(default: a new runs/edge-<time>). A folder that holds files is refused unless --force or --append.")
@click.option("--force", is_flag=True,
              help="Replace the contents of a non-empty --out run folder (each removed entry is named).")
@click.option("--append", is_flag=True,
              help="Add this run's rows to the logs in --out; the earlier summary is kept as summary.before-N.json.")
@click.option("--summary-every", default=10.0, show_default=True, type=FiniteFloat(min=0),
              help="Rewrite summary.json and counts.csv every this many seconds during the run (0: only at the end).")
@click.option("--summary-every-frames", default=500, show_default=True, type=click.IntRange(min=0),
              help="... and every this many frames (0: never by count).")
@click.option("--threads", type=click.IntRange(1, 256), help="Inference threads (default: all cores).")
@click.option("--fps", type=FiniteFloat(min=0.01), help="Process at most this many frames per second.")
@click.option("--max-frames", type=click.IntRange(min=1),
              help="Stop after this many frames from the source (unreadable ones that were skipped count too).")
@click.option("--loop", is_flag=True, help="Repeat an image folder or video forever (soak tests).")
@click.option("--swap-red-blue", is_flag=True,
              help="Swap the red and blue channels of every frame: for a camera, or files, that deliver BGR as RGB "
                   "(the run warns 'red and blue look swapped' when the stain says so).")
@click.option("--method", default="stain", show_default=True, type=click.Choice(METHODS),
              help="Segmentation: 'stain' (blue-minus-green nuclei, default) or 'otsu' (the papers' pipeline).")
@click.option("--crop-mode", type=click.Choice(CROP_MODES), default="rbc", show_default=True,
              help="Crop size: 'rbc' = --rbc-factor red-cell diameters (magnification read off the smear, "
                   "cells keep their relative sizes); 'cell' = the cell's own box / --cell-fraction; "
                   "'fixed' = --crop-side pixels. A platelet candidate's crop is half that side (sized for a platelet).")
@click.option("--rbc-factor", default=DEFAULT_RBC_FACTOR, show_default=True, type=FiniteFloat(0.5, 20),
              help="Crop side in red-cell diameters (BloodMNIST's 200 px PBC crops span ~3).")
@click.option("--cell-fraction", default=DEFAULT_CELL_FRACTION, show_default=True, type=FiniteFloat(0.05, 1.0),
              help="How much of the crop side the cell's box spans ('cell' mode, and before red cells are measured).")
@click.option("--crop-side", type=click.IntRange(8, 4096),
              help="Crop side in pixels (implies --crop-mode fixed; for a microscope that matches the training images).")
@click.option("--no-platelets", is_flag=True, help="Detect nucleated cells only.")
@click.option("--rbc", "rbc_bundle", type=click.Path(path_type=Path),
              help="Red-cell morphology bundle ('packaged': the one shipped with hemaedge): also detect, count and "
                   "classify every red cell (kind 'rbc' in cells.csv; red cells per field, % per morphology with 95% "
                   "intervals and flags in the summary; rbc_counts.csv).")
@click.option("--count-red-cells", is_flag=True, help="Detect and count red cells without a morphology model.")
@click.option("--rbc-normalize/--no-rbc-normalize", default=False, show_default=True,
              help="Map each frame's background and red-cell colour to the red-cell model's training slides "
                   "before classifying red cells (needs a bundle with a domain section; docs/redcells.md).")
@click.option("--rbc-scale", type=click.Choice(["auto", "field", "bundle"]), default="auto", show_default=True,
              help="Which red-cell diameter sizes the red-cell crops: 'bundle' = the model's training frames' "
                   "(absolute sizes: micro-/macrocytes as trained, right at the training magnification only), "
                   "'field' = each field's own ruler (sizes relative to the field), 'auto' = 'bundle' where the "
                   "field's ruler reads within 1.3x of it, else 'field' (docs/redcells.md).")
@click.option("--review-threshold", default=0.6, show_default=True, type=FiniteFloat(0, 1),
              help="Cells classified with lower confidence are flagged for review; a nucleated one below "
                   "--unidentified-below becomes 'unidentified'.")
@click.option("--unidentified-below", default=0.4, show_default=True, type=FiniteFloat(0, 1),
              help="A nucleated cell classified with lower confidence is counted as 'unidentified' (for review).")
@click.option("--ood-threshold", default="auto", show_default=True, type=OOD_THRESHOLD,
              help="A nucleated cell whose out-of-distribution score (-log of its top probability after the "
                   "bundle's temperature) is above this is 'unidentified' (reason 'out of distribution'). "
                   "'auto' = the bundle's strict level, calibrated on the training data's validation split (with its "
                   "review level: cells above it are counted but flagged; docs/edge.md); bundles without one: "
                   "confidence-only rule; 'off' = confidence only; or a number >= 0.")
@click.option("--review-level",
              help="Flag for review every counted white cell whose top probability is below this (e.g. 0.95 "
                   "flags more, 0.7 fewer), instead of the bundle's review level (its OOD review tier, 0.90 for "
                   "the packaged default). Not below the unidentified level. docs/edge.md 'How much to review'.")
@click.option("--review-classes",
              help="Opt-in review policy: every call of these classes is flagged for review, e.g. "
                   "'erythroblast,ig' (class names of the bundle, or a two-word class's initials).")
@click.option("--views", default="auto", show_default=True, type=click.Choice(["auto", "off", "flips", "dihedral"]),
              help="Classify each cell from flipped/rotated views of its crop, probabilities averaged (edge/tta.py): "
                   "'flips' = 4 views, 'dihedral' = 8 (inference cost x4 / x8); 'auto' = the bundle's "
                   "inference.views for image stills (bundles without it: off) and one view on a video, "
                   "camera or --same-slide, where each tracked cell is averaged over its frames.")
@click.option("--same-slide", is_flag=True,
              help="Image stills are overlapping views of one slide: one ruler, stage motion and tracking "
                   "(each cell counted once), as for a video or a camera.")
@click.option("--target-wbc", type=click.IntRange(1, 100000),
              help="End the run when this many distinct white cells are counted (100 or 200 as in a manual differential).")
@click.option("--count-edge-cells", is_flag=True,
              help="Also count cells cut by the frame edge (by default only whole cells are counted).")
@click.option("--save-crops", type=click.Choice(["all", "flagged"]),
              help="Save each cell's crop (as the model saw it) and a wider context view under OUT/crops and "
                   "OUT/context: for every cell, or only those flagged for review (for `hemaedge review`).")
@click.option("--fsync", is_flag=True, help="fsync the logs after every frame (survives power loss; slower on SD cards).")
@click.option("--annotate", "annotate_dir", type=click.Path(path_type=Path), help="Write annotated frames (JPEG) here.")
@click.option("--annotate-video", type=click.Path(path_type=Path), help="Write an annotated video (.mp4) here.")
@click.option("--preview", is_flag=True, help="Show a live window (only where a display exists).")
@click.option("--camera-retries", default=5, show_default=True, type=click.IntRange(0, 1000),
              help="Times a camera that stops delivering frames is retried (backoff doubling) before the run ends.")
@click.option("--camera-backoff", default=0.5, show_default=True, type=FiniteFloat(0, 60),
              help="First retry wait in seconds.")
@click.option("--width", type=click.IntRange(16, 8192), help="Camera capture width.")
@click.option("--height", type=click.IntRange(16, 8192), help="Camera capture height.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--status-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Prometheus textfile for monitoring (fps, stage p50, flagged rate, model), rewritten "
                   "atomically every 10 frames and at the end (default: <store>/status.prom when running "
                   "the store's active model).")
@user_errors
def run(source, bundle, model, classes, input_size, preprocess, scaling, input_dtype, input_quant, output_kind,
        out, force, append, summary_every, summary_every_frames, threads, fps, max_frames, loop, swap_red_blue, method, crop_mode,
        rbc_factor, cell_fraction, crop_side, no_platelets, rbc_bundle, count_red_cells, rbc_normalize, rbc_scale, review_threshold,
        unidentified_below, ood_threshold, review_level, review_classes, views, same_slide, target_wbc, count_edge_cells, save_crops,
        fsync, annotate_dir, annotate_video, preview, camera_retries, camera_backoff, width, height, quiet,
        status_file):
    """Segment and classify every cell of each frame; record latency, memory and counts.

    \b
    Examples:
      hemaedge edge run --bundle models/int8 --source samples/pbc
      hemaedge edge run --source 0 --fps 5 --annotate-video run.mp4
      hemaedge edge run --model m.tflite --classes classes.txt --source smear.mp4 --max-frames 100
    """
    from tqdm import tqdm

    from hemaedge.edge.annotate import Annotator, check_image_dir, check_video_output
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.defaults import load_model
    from hemaedge.edge.pipeline import CellClassifier, model_info
    from hemaedge.edge.recorder import Recorder, check_appendable, format_summary
    from hemaedge.edge.runloop import StopRequest, SummaryEvery, run as run_loop
    from hemaedge.edge.segment import SegmentParams
    from hemaedge.edge.counting import CountingSession
    from hemaedge.edge.sources import ImageSource, limit, open_source, swap_red_blue as swapped
    from hemaedge.edge.status_file import open_status_file

    if crop_side:
        crop_mode = "fixed"
    elif crop_mode == "fixed":
        raise UserError("--crop-mode fixed needs --crop-side PIXELS")
    if review_level is not None:  # checked before the model loads (identify.parse_review_level)
        from hemaedge.edge.identify import parse_review_level

        review_level = parse_review_level(review_level)
    if force and append:
        raise UserError("--force replaces the output folder and --append adds to it: give one of them")
    if save_crops and append:
        raise UserError("--save-crops names crops by frame number, which starts again with --append: "
                        "save the crops of a new run in a new --out folder")
    if annotate_video:
        check_video_output(annotate_video, overwrite=force)
    if annotate_dir:
        check_image_dir(annotate_dir, overwrite=force or append)
    # From here on Ctrl-C / SIGTERM end the run with a summary, even before its first frame.
    stop = StopRequest().install()
    try:
        t0 = time.perf_counter()
        contract = _contract(input_size, preprocess, scaling, input_dtype, input_quant) if model else None
        mdl = load_model(bundle, model, classes, contract, output_kind)
        backend = load_backend(mdl, threads=threads)
        red_cells = _red_cells(rbc_bundle, count_red_cells, threads, rbc_normalize, rbc_scale)
        load_s = time.perf_counter() - t0
        src = open_source(source, loop=loop, retries=camera_retries, backoff=camera_backoff,
                          width=width, height=height, max_frames=max_frames)
        one_slide = same_slide or not isinstance(src, ImageSource)  # video, camera: one slide under the lens
        classifier = CellClassifier(mdl, backend, SegmentParams(method=method, detect_platelets=not no_platelets),
                                    cell_fraction=cell_fraction, crop_side=crop_side, crop_mode=crop_mode,
                                    rbc_factor=rbc_factor, same_slide=one_slide, review_threshold=review_threshold,
                                    unidentified_below=unidentified_below, red_cells=red_cells,
                                    ood_threshold=ood_threshold, views=views, review_level=review_level,
                                    review_classes=review_classes, classify_cut_cells=count_edge_cells)
        counting = CountingSession(classifier, one_slide=one_slide, target_wbc=target_wbc,
                                   count_edge_cells=count_edge_cells)
        if append and out is not None:
            check_appendable(out)  # before the old summary is set aside
        folder = _output_folder(out, force, append)
        recorder = Recorder(folder.path, mdl.classes, review_threshold=review_threshold, fsync=fsync,
                            append=folder.mode == "append",
                            red_cell_classes=red_cells.classes if red_cells else None)
        status = open_status_file(status_file, mdl)
        annotator = Annotator(review_threshold, annotate_dir, annotate_video, fps=fps or 5.0) \
            if (annotate_dir or annotate_video) else None
        window = _open_preview(review_threshold) if preview else None
        observers = []
        if save_crops:
            from hemaedge.edge.crops import CropSaver

            observers.append(CropSaver(folder.path, mdl.contract.size, save_crops, review_threshold=review_threshold,
                                       fsync=fsync, crops_for=classifier.crops_for))
        total = max_frames or (len(src.files) if hasattr(src, "files") and not loop else None)
        bar = tqdm(total=total, unit="frame", disable=quiet, desc="frames")

        def on_frame(row):
            bar.update(1)
            bar.set_postfix(cells=row["cells"], ms=f"{row['total_ms']:.0f}", refresh=False)
            if status is not None:
                status.frame_done(recorder)

        with log_to_file(folder.path / "run.log"):
            logger.info("model: %s [%s]", mdl.describe(), getattr(backend, "runtime", backend.name))
            if red_cells is not None and red_cells.model is not None:
                logger.info("red-cell model: %s", red_cells.model.describe())
            logger.info("source: %s; writing to %s%s", src.describe(), folder.path,
                        {"append": " (appending)", "replace": " (replaced)"}.get(folder.mode, ""))
            try:
                frames = swapped(iter(src)) if swap_red_blue else iter(src)
                summary = run_loop(src, classifier, recorder, annotator=annotator, preview=window, on_frame=on_frame,
                                   observers=observers,
                                   frames_iter=limit(frames, max_frames, fps), model_info=model_info(mdl, backend),
                                   load_s=load_s, stop=stop, output={"folder": str(folder.path), "mode": folder.mode},
                                   summary_every=SummaryEvery(frames=summary_every_frames, seconds=summary_every),
                                   counting=counting)
            finally:
                bar.close()
            if status is not None:
                status.finish(recorder, summary)
    finally:
        stop.restore()
    out = folder.path
    click.echo(format_summary(summary))
    for warning in (summary.get("input") or {}).get("warnings", []):
        click.secho(f"\nWARNING: {warning}", fg="yellow", err=True)
    if (summary.get("domain") or {}).get("warning"):
        click.secho(f"\nWARNING: {summary['domain']['warning']}", fg="yellow", err=True)
    click.echo(f"\nlogs: {out}/frames.jsonl, frames.csv, cells.csv, run.log; summary: {out}/summary.json; "
               f"counts: {out}/counts.csv")


def _output_folder(out, force: bool, append: bool):
    """The run folder, ready; tells the user what --force removed and what --append set aside."""
    from hemaedge.edge.run_folder import prepare_run_folder, remove_partial_writes

    folder = prepare_run_folder(out, replace=force, append=append)
    for name in folder.removed:
        click.echo(f"--force: removed {folder.path / name}", err=True)
    for moved in folder.set_aside:
        click.echo(f"--append: earlier summary kept: {moved}", err=True)
    remove_partial_writes(folder.path)
    return folder


def _open_preview(review_threshold: float):
    from hemaedge.edge.annotate import Preview

    window, why = Preview.open(review_threshold)
    if window is None:
        click.echo(f"note: no preview window: {why}", err=True)
    return window


def _red_cells(rbc_bundle, count_only: bool, threads, normalize_frames: bool = False, scale: str = "auto"):
    """The red-cell stage of a run (None without --rbc / --count-red-cells); its bundle is loaded
    and verified like the main one (checksums, the store's signature policy)."""
    if not (rbc_bundle or count_only):
        return None
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.defaults import load_model
    from hemaedge.edge.rbc_morphology import RedCellClassifier, rbc_bundle_path

    if not rbc_bundle:
        return RedCellClassifier()
    model = load_model(rbc_bundle_path(rbc_bundle))
    return RedCellClassifier(model, load_backend(model, threads=threads), normalize_frames=normalize_frames,
                             scale=scale)


@click.command()
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--checksums-only", is_flag=True, help="Do not load the model, only check files and manifest.")
@user_errors
def verify(bundle, checksums_only):
    """Check a bundle: manifest, checksums, class list, input contract, and that the model
    loads in its back end and gives one output per class. Exit code 2 when anything is wrong."""
    from hemaedge.edge.bundle import load_bundle

    b = load_bundle(bundle)
    click.echo(b.describe())
    if not checksums_only:
        from hemaedge.edge.bundle_check import check_runnable

        runtime = check_runnable(b, threads=1)
        click.echo(f"model loads in {runtime} and gives {len(b.classes)} class scores")
    from hemaedge.edge.store import StoreError, default_store

    try:  # against this device's trust store; a damaged store must not hide the other checks
        click.echo(f"signature: {default_store().signature_status(b.manifest)}")
    except StoreError as exc:
        click.echo(f"signature: not checked ({str(exc).splitlines()[0]})")
    click.echo("OK")
