"""Thread CPU time per counting stage on BCCD frames, and a fingerprint of the results.

    python -m hemaedge.benchmarks.tools.counting_stages --frames 50
    PYTHONPATH=<linked package of another checkout> python benchmarks/tools/counting_stages.py --frames 50

(the linked package as `counting_speed.baseline_package` makes it; the file is run by path so
that the other checkout need not have it).

Runs the packaged default bundle on the first N frames twice, through `CountingSession.process`
as `edge run` does: as an image folder (per-field ruler) and as one slide (stage motion, focus
gate, running ruler), timing each stage with `time.process_time` (CPU of the whole process:
far steadier than wall-clock on a loaded machine, and it includes OpenCV's and the runtime's
worker threads, which thread time would miss). The fingerprint (SHA-1 of every box, crop,
label, probability, ruler value and, on one slide, stage offset) must be the same for two
versions that claim the same results. A stage that a version does not have is not listed.
Prints; writes nothing.
"""
from __future__ import annotations

import collections
import hashlib
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
def main(source, frames):
    """Per-stage thread CPU ms/frame of the counting pipeline, and a results fingerprint."""
    from hemaedge.edge import counting, focus, pipeline, tracking
    from hemaedge.edge import ruler as rl
    from hemaedge.edge import segment as seg
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.defaults import load_model
    from hemaedge.edge.sources import Frame

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

    pipeline.blank_reason = timed("blank", pipeline.blank_reason)
    pipeline.segment = timed("segment", pipeline.segment)
    if hasattr(pipeline, "work_copy"):
        pipeline.work_copy = timed("work_copy", pipeline.work_copy)
    rl.red_cell_diameter = timed("ruler", rl.red_cell_diameter)
    pipeline.CellClassifier.crops_for = timed("crops_for", pipeline.CellClassifier.crops_for)
    pipeline.CellClassifier.classify_crops = timed("classify", pipeline.CellClassifier.classify_crops)
    tracking.StageMotion.update = timed("motion", tracking.StageMotion.update)
    focus.FocusGate.check = timed("focus_gate", focus.FocusGate.check)
    counting.grey_small = timed("grey", counting.grey_small)

    import hemaedge

    model = load_model(Path(hemaedge.__file__).resolve().parent / "models" / "default", None, None, None, None)
    backend = load_backend(model, threads=2)
    for one_slide in (False, True):
        spent.clear()
        clf = pipeline.CellClassifier(model, backend, seg.SegmentParams(), same_slide=one_slide)
        session = counting.CountingSession(clf, one_slide=one_slide)
        results = []
        t0 = time.process_time()
        for i, (f, im) in enumerate(zip(files, imgs)):
            res, _ = session.process(Frame(i, im, f.name, 0.0))
            offset = np.round(session.motion.offset, 3).tolist() if one_slide else None
            results.append((res.status, res.labels, [d.box for d in res.detections], [d.crop for d in res.detections],
                            np.round(res.probabilities, 5).tolist(), res.ruler.diameter if res.ruler else None, offset))
        total = time.process_time() - t0
        n = len(imgs)
        click.echo(f"{'one slide' if one_slide else 'image folder'}: total {total / n * 1e3:.2f} ms/frame; "
                   + ", ".join(f"{k} {v / n * 1e3:.2f}" for k, v in spent.items()))
        click.echo(f"  results fingerprint {hashlib.sha1(pickle.dumps(results)).hexdigest()}")


if __name__ == "__main__":
    main()
