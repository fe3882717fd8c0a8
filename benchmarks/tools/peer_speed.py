"""Our per-cell classification and segmentation stage beside the Ultralytics models a user would
pick instead, on the same BCCD frames and crops, in one run (interleaved), at the same threads.

    python -m hemaedge.benchmarks.tools.peer_speed --peer-python PEER_ENV/bin/python
    python -m hemaedge.benchmarks.tools.peer_speed --peer-models DIR     # exported before

* per cell: our bundle (default: the packaged default) on every crop our segmenter cuts, batch 1,
  against YOLO11n-cls at 128 px (ONNX fp32, ONNX Runtime) on the same crops: the model call
  alone, and with each side's preprocessing (ours: `prepare_batch`, the device's code; the
  peer's: resize to 128, RGB / 255, CHW, as Ultralytics' classify transform does for a square crop);
* per frame: our segmentation stage (`CellClassifier.process`'s `segment` timing: blank check,
  red-cell ruler, segmentation, crops) against a YOLO11n detector at 640 px (letterbox to
  640x640, / 255, CHW, model call; NMS left out: on random weights its cost is meaningless, and
  on a trained model it only adds).

The peers come from `peer_export.py`, run in a separate environment with the `peer` extra
(`--peer-python`), or from a folder it wrote before (`--peer-models`). This process needs only the
edge extra: ONNX Runtime times both sides. Wall-clock and process-CPU p50 of every call; CPU time
is far less sensitive to a shared machine's load. Results: benchmarks/results/peer_speed.{md,json}.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import click
import cv2
import numpy as np

from hemaedge.benchmarks.tools.segmentation_bccd import machine
from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.edge.cli_support import command_line
from hemaedge.edge.metrics_runtime import percentiles

RESULTS = Path(__file__).resolve().parents[1] / "results"
HERE = Path(__file__).resolve().parent
DEFAULT_BUNDLE = HERE.parents[1] / "src" / "hemaedge" / "models" / "default"


def export_peers(peer_python: str, out: Path) -> None:
    env = dict(os.environ, YOLO_CONFIG_DIR=str(out / "ultralytics-settings"), YOLO_OFFLINE="1")
    res = subprocess.run([peer_python, str(HERE / "peer_export.py"), "--out", str(out)], env=env,
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise click.ClickException(f"peer export failed in {peer_python}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}")


def ort_session(path: Path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    # Both sides run interleaved in this process: ONNX Runtime's worker threads would otherwise
    # spin for a while after every peer call, holding both cores during our next call (and
    # counting as our process's CPU time). Without spinning each side gets the cores it asks for.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def peer_cls_input(crop: np.ndarray, size: int) -> np.ndarray:
    x = cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def letterbox(frame: np.ndarray, size: int) -> np.ndarray:
    """Ultralytics' letterbox: scale the long side to `size`, pad with grey 114 to a square."""
    h, w = frame.shape[:2]
    r = size / max(h, w)
    nh, nw = round(h * r), round(w * r)
    img = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR) if (nh, nw) != (h, w) else frame
    top, left = (size - nh) // 2, (size - nw) // 2
    img = cv2.copyMakeBorder(img, top, size - nh - top, left, size - nw - left, cv2.BORDER_CONSTANT, value=(114,) * 3)
    return np.ascontiguousarray((img.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])


class Clock:
    """Wall and process-CPU milliseconds of each timed call, per name."""

    def __init__(self):
        self.wall: dict[str, list] = {}
        self.cpu: dict[str, list] = {}

    def time(self, name: str, fn, *args):
        w, c = time.perf_counter(), time.process_time()
        out = fn(*args)
        self.add(name, (time.perf_counter() - w) * 1e3, (time.process_time() - c) * 1e3)
        return out

    def add(self, name: str, wall_ms: float, cpu_ms: float) -> None:
        self.wall.setdefault(name, []).append(wall_ms)
        self.cpu.setdefault(name, []).append(cpu_ms)

    def row(self, name: str) -> dict:
        w, c = percentiles(self.wall[name], (50, 90)), percentiles(self.cpu[name], (50,))
        return {"n": len(self.wall[name]), "wall_p50_ms": w["p50"], "wall_p90_ms": w["p90"],
                "wall_mean_ms": w["mean"], "cpu_p50_ms": c["p50"]}


ROWS = [  # (key, comparison, what, how)
    ("ours_cell_model", "per cell", "ours: {bundle}", "model call, batch 1"),
    ("peer_cell_model", "per cell", "YOLO11n-cls 128 px, ONNX fp32", "model call, batch 1"),
    ("ours_cell_pre", "per cell", "ours: {bundle}", "prepare_batch alone (resize, colour normalisation, CLAHE)"),
    ("peer_cell_pre", "per cell", "YOLO11n-cls 128 px, ONNX fp32", "resize + scale alone"),
    ("ours_cell_total", "per cell", "ours: {bundle}", "prepare_batch + model call"),
    ("peer_cell_total", "per cell", "YOLO11n-cls 128 px, ONNX fp32", "resize + scale + model call"),
    ("ours_segment", "per frame", "ours: segmentation stage", "blank check, ruler, segment, crops"),
    ("peer_detect_model", "per frame", "YOLO11n detector 640 px, ONNX fp32", "model call (no NMS)"),
    ("peer_detect_total", "per frame", "YOLO11n detector 640 px, ONNX fp32", "letterbox + scale + model call (no NMS)"),
]


def to_markdown(r: dict) -> str:
    rows = r["rows"]
    lines = [f"# Speed beside the Ultralytics peers ({r['date']})", "", f"Command: `{r['command']}`  ",
             f"Machine: {r['machine']}; load average at start {r['load_average']}  ",
             f"Weights: ours = {r['bundle']['name']} ({r['bundle']['format']}, {r['bundle']['backend']}, "
             f"`{r['bundle']['path']}`); peers = Ultralytics {r['peers']['ultralytics']} (torch {r['peers']['torch']}) "
             "YOLO11n-cls and YOLO11n built from their yaml with **random weights** "
             f"({', '.join(m['file'] + ' ' + str(m['classes']) + ' classes' for m in r['peers']['models'])}), "
             f"exported to ONNX fp32 by `benchmarks/tools/peer_export.py`, run with ONNX Runtime {r['onnxruntime']}.  ",
             f"Data: {r['frames']} BCCD frames of `{r['source']}`, {r['crops']} crops (every cell our segmenter "
             f"found), {r['repeats']} interleaved rounds, {r['threads']} threads for every model.  ",
             "Absolute times are noisy on this shared machine; the rows were measured side by side. CPU = process "
             "CPU time of the call (all threads).", "",
             "| compares | what | timed | n | wall p50 ms | wall p90 ms | CPU p50 ms |", "|---|---|---|---|---|---|---|"]
    for key, comp, what, how in ROWS:
        x = rows[key]
        lines.append(f"| {comp} | {what.format(bundle=r['bundle']['name'])} | {how} | {x['n']} | "
                     f"{x['wall_p50_ms']:.2f} | {x['wall_p90_ms']:.2f} | {x['cpu_p50_ms']:.2f} |")
    ratio = r["ratios"]
    lines += ["", f"Ratios (peer p50 / ours p50, wall): per-cell model call **{ratio['cell_model']:.2f}x**, per cell "
              f"with preprocessing **{ratio['cell_total']:.2f}x**, detector model call vs our whole segmentation "
              f"stage **{ratio['segment']:.1f}x** (> 1: ours is faster).", ""]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--peer-python", type=click.Path(exists=True, dir_okay=False),
              help="Python of an environment with the `peer` extra; exports the peers into a temporary folder.")
@click.option("--peer-models", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A folder peer_export.py wrote (instead of --peer-python).")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path), default=DEFAULT_BUNDLE,
              show_default="the packaged default")
@click.option("--source", default="../shared/data/bccd/JPEGImages", show_default=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--frames", default=50, show_default=True, type=click.IntRange(1))
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(1, 20))
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default="benchmarks/results")
def main(peer_python, peer_models, bundle, source, frames, repeats, threads, out):
    """Per-cell classification and segmentation stage vs YOLO11n-cls / YOLO11n, same frames, same run."""
    import onnxruntime

    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.defaults import load_model
    from hemaedge.edge.pipeline import CellClassifier
    from hemaedge.edge.preprocess import prepare_batch, read_image_rgb

    if bool(peer_python) == bool(peer_models):
        raise click.UsageError("pass one of --peer-python or --peer-models")
    load = [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="hemaedge-peers-") as tmp:
        if peer_python:
            peer_models = Path(tmp)
            click.echo("exporting the peers ...")
            export_peers(peer_python, peer_models)
        peers = json.loads((peer_models / "peers.json").read_text())
        by_task = {m["task"]: m for m in peers["models"]}
        cls_m, det_m = by_task["classify"], by_task["detect"]
        peer_cls = ort_session(peer_models / cls_m["file"], threads)
        peer_det = ort_session(peer_models / det_m["file"], threads)
    cls_in, det_in = peer_cls.get_inputs()[0].name, peer_det.get_inputs()[0].name
    cls_size, det_size = cls_m["input"][2], det_m["input"][2]

    model = load_model(bundle)
    backend = load_backend(model, threads=threads)
    clf = CellClassifier(model, backend)
    files = sorted(source.glob("*.jpg"))[:frames]
    images = [read_image_rgb(f) for f in files]
    crops = []
    for img in images:  # the crops our pipeline classifies (and a warm-up of our side)
        res = clf.process(img)
        crops.append(clf.crops_for(img, res.detections))
    n_crops = sum(len(c) for c in crops)
    if not n_crops:
        raise click.ClickException(f"no cells found in the first {frames} frames of {source}")
    for c in [c for cs in crops for c in cs][:10]:  # warm-up of the peers
        peer_cls.run(None, {cls_in: peer_cls_input(c, cls_size)})
    peer_det.run(None, {det_in: letterbox(images[0], det_size)})

    clock = Clock()
    with click.progressbar(range(repeats * len(images)), label="timing") as bar:
        for k in bar:  # one frame of every side, then its cells on every side: load hits all alike
            img, cell_crops = images[k % len(images)], crops[k % len(images)]
            clock.time("ours_segment", clf.find_cells, img)
            x = clock.time("peer_detect_pre", letterbox, img, det_size)
            clock.time("peer_detect_model", peer_det.run, None, {det_in: x})
            for c in cell_crops:
                batch = clock.time("ours_cell_pre", prepare_batch, [c], model.contract)
                clock.time("ours_cell_model", backend.predict, batch)
                x = clock.time("peer_cell_pre", peer_cls_input, c, cls_size)
                clock.time("peer_cell_model", peer_cls.run, None, {cls_in: x})
    for side, stage in (("ours", "cell"), ("peer", "cell"), ("peer", "detect")):  # preprocessing + model call
        pre, mod = f"{side}_{stage}_pre", f"{side}_{stage}_model"
        for w, c in zip(zip(clock.wall[pre], clock.wall[mod]), zip(clock.cpu[pre], clock.cpu[mod])):
            clock.add(f"{side}_{stage}_total", sum(w), sum(c))
    rows = {key: clock.row(key) for key, *_ in ROWS}
    manifest = model.manifest
    report = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
        "load_average": load, "command": command_line("python -m hemaedge.benchmarks.tools.peer_speed"),
        "bundle": {"name": manifest.get("name"), "path": str(bundle), "format": manifest.get("model", {}).get("format"),
                   "backend": model.backend, "model_sha256": hashlib.sha256(Path(model.model_path).read_bytes()).hexdigest(),
                   "weights": manifest.get("source", {}).get("weights")},
        "peers": peers, "onnxruntime": onnxruntime.__version__, "source": str(source), "frames": len(images),
        "crops": n_crops, "repeats": repeats, "threads": threads, "rows": rows,
        "ratios": {"cell_model": rows["peer_cell_model"]["wall_p50_ms"] / rows["ours_cell_model"]["wall_p50_ms"],
                   "cell_total": rows["peer_cell_total"]["wall_p50_ms"] / rows["ours_cell_total"]["wall_p50_ms"],
                   "segment": rows["peer_detect_model"]["wall_p50_ms"] / rows["ours_segment"]["wall_p50_ms"]},
    }
    write_result(out / "peer_speed", report, to_markdown(report))
    click.echo(to_markdown(report))


if __name__ == "__main__":
    main()
