"""CPU time per counting stage on BCCD frames, and a fingerprint of the results.

    python -m hemaedge.benchmarks.tools.counting_stages --frames 50
    PYTHONPATH=<linked package of another checkout> python benchmarks/tools/counting_stages.py --frames 50

(the linked package as `counting_speed.baseline_package` makes it; the file is run by path so
that the other checkout need not have it).

Runs the packaged default bundle on the first N frames through `CountingSession.process`, as
`edge run` does: as an image folder (per-field ruler) and as one slide (stage motion, focus
gate, running ruler). A version without the counting stages (the pipeline before issue 12) runs
`CellClassifier.process` as an image folder only. Each stage is timed with `time.process_time`
(CPU of the whole process: far steadier than wall-clock on a loaded machine, and it includes
OpenCV's and the runtime's worker threads). `--threads 1` runs everything in one thread (OpenCV
and the model): on a machine shared by many jobs, worker threads that wait for a descheduled
partner burn CPU, and one thread measures the work itself. The fingerprint (SHA-1 of every box,
crop, label, probability, ruler value and, on one slide, stage offset) must be the same for two
versions that claim the same results. A stage that a version does not have is not listed;
"platelets (in segment)" is `segment.find_platelets`, already counted in "segment".
`--json FILE` writes the figures (`counting_speed --stage-cpu` collects them). One untimed
warm-up frame first (the model's and OpenCV's one-off set-up), so the figures are steady-state.
"""
from __future__ import annotations

import collections
import hashlib
import inspect
import json
import pickle
import time
from pathlib import Path

import click
import cv2
import numpy as np


@click.command()
@click.option("--source", default="../shared/data/bccd/JPEGImages", show_default=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--frames", default=50, show_default=True, type=click.IntRange(1))
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 64),
              help="Model threads; 1 also runs OpenCV in this one thread.")
@click.option("--mode", type=click.Choice(["both", "folder", "slide"]), default="both", show_default=True,
              help="Image folder, one slide, or both (a version without counting stages: folder only).")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="A bundle folder to run instead of the packaged default (e.g. an older checkout's default).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Write the figures here.")
def main(source, frames, threads, mode, json_out, bundle):
    """Per-stage CPU ms/frame of the counting pipeline, and a results fingerprint."""
    from hemaedge.edge import pipeline
    from hemaedge.edge import segment as seg
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.defaults import load_model

    # the counting stages of issue 12 (absent in the pipeline before them); looked for beside this
    # version's pipeline: the editable install would find another checkout's module by name
    counting = None
    if (Path(pipeline.__file__).parent / "counting.py").exists():
        from hemaedge.edge import counting, focus, tracking
        from hemaedge.edge import ruler as rl
        from hemaedge.edge.sources import Frame
    if threads == 1:
        cv2.setNumThreads(1)
    files = sorted(source.glob("*.jpg"))[:frames]
    imgs = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]
    spent = collections.defaultdict(float)

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.process_time()
            r = fn(*a, **k)
            spent[name] += time.process_time() - t
            return r
        return wrapper

    for name in ("blank_reason", "work_image", "segment", "work_copy"):
        if hasattr(pipeline, name):
            setattr(pipeline, name, timed(name.replace("_reason", ""), getattr(pipeline, name)))
    if hasattr(seg, "find_platelets"):  # called by segment(): its time is part of "segment" too
        seg.find_platelets = timed("platelets (in segment)", seg.find_platelets)
    for name in ("crops_for", "classify_crops"):
        if hasattr(pipeline.CellClassifier, name):
            setattr(pipeline.CellClassifier, name, timed(name.replace("_crops", ""), getattr(pipeline.CellClassifier, name)))
    if counting is not None:
        rl.red_cell_diameter = timed("ruler", rl.red_cell_diameter)
        tracking.StageMotion.update = timed("motion", tracking.StageMotion.update)
        focus.FocusGate.check = timed("focus_gate", focus.FocusGate.check)
        counting.grey_small = timed("grey", counting.grey_small)

    import hemaedge

    model = load_model(bundle or Path(hemaedge.__file__).resolve().parent / "models" / "default", None, None, None, None)
    backend = load_backend(model, threads=threads)
    # warm-up, untimed: the model's first call (delegate set-up, buffers) and OpenCV's first
    # calls cost tens of ms once per process; per-frame figures are the steady state
    pipeline.CellClassifier(model, backend, seg.SegmentParams()).process(imgs[0])
    report = {"frames": len(imgs), "threads": threads, "counting_stages": counting is not None, "warm_up_frames": 1,
              "modes": {}}
    modes = {"both": (False, True), "folder": (False,), "slide": (True,)}[mode]
    for one_slide in (modes if counting is not None else (False,)):
        spent.clear()
        if counting is not None:
            # as `edge run` builds it: cells cut by the frame edge are not classified (where this version can)
            cut = ({"classify_cut_cells": False}
                   if "classify_cut_cells" in inspect.signature(pipeline.CellClassifier).parameters else {})
            clf = pipeline.CellClassifier(model, backend, seg.SegmentParams(), same_slide=one_slide, **cut)
            session = counting.CountingSession(clf, one_slide=one_slide)
        else:
            clf = pipeline.CellClassifier(model, backend, seg.SegmentParams())
        results = []
        t0 = time.process_time()
        for i, (f, im) in enumerate(zip(files, imgs)):
            if counting is None:
                res, offset = clf.process(im), None
            else:
                res, _ = session.process(Frame(i, im, f.name, 0.0))
                offset = np.round(session.motion.offset, 3).tolist() if one_slide else None
            ruler = getattr(res, "ruler", None)
            results.append((getattr(res, "status", ""), res.labels, [d.box for d in res.detections],
                            [d.crop for d in res.detections], np.round(res.probabilities, 5).tolist(),
                            ruler.diameter if ruler else None, offset))
        total = time.process_time() - t0
        n = len(imgs)
        mode = "one slide" if one_slide else "image folder"
        fingerprint = hashlib.sha1(pickle.dumps(results)).hexdigest()
        report["modes"][mode] = {"total_ms": round(total / n * 1e3, 3), "fingerprint": fingerprint,
                                 "stages_ms": {k: round(v / n * 1e3, 3) for k, v in spent.items()},
                                 "cells_per_frame": round(sum(len(r[1]) for r in results) / n, 2),
                                 # cells the model saw (a version that leaves cut cells unclassified labels them so)
                                 "classified_per_frame": round(sum(sum(lab != "not classified" for lab in r[1])
                                                                   for r in results) / n, 2)}
        click.echo(f"{mode}: total {total / n * 1e3:.2f} ms/frame; "
                   + ", ".join(f"{k} {v / n * 1e3:.2f}" for k, v in spent.items()))
        click.echo(f"  results fingerprint {fingerprint}")
    if json_out:
        json_out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
