"""Thread CPU time per counting stage on BCCD frames, and a fingerprint of the results.

    python -m hemaedge.benchmarks.tools.counting_stages --frames 50
    PYTHONPATH=<linked package of another checkout> python benchmarks/tools/counting_stages.py --frames 50

(the linked package as `counting_speed.baseline_package` makes it; the file is run by path so
that the other checkout need not have it).

Runs the packaged default bundle on the first N frames twice: as an image folder (per-field
ruler) and as one slide (stage motion, focus gate, running ruler), timing each stage with
`time.thread_time` (CPU of this thread: far steadier than wall-clock on a loaded machine;
inference threads other than this one are not counted). The fingerprint (SHA-1 of every box,
crop, label, probability and ruler value) must be the same for two versions that claim the same
results. A stage that a version does not have is not listed. Prints; writes nothing.
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
    from hemaedge.edge import focus, pipeline, tracking
    from hemaedge.edge import ruler as rl
    from hemaedge.edge import segment as seg
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.counting import CountingSession
    from hemaedge.edge.defaults import load_model

    files = sorted(source.glob("*.jpg"))[:frames]
    imgs = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files]
    spent = collections.defaultdict(float)

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.thread_time()
            r = fn(*a, **k)
            spent[name] += time.thread_time() - t
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

    import hemaedge

    model = load_model(Path(hemaedge.__file__).resolve().parent / "models" / "default", None, None, None, None)
    backend = load_backend(model, threads=2)
    for one_slide in (False, True):
        spent.clear()
        clf = pipeline.CellClassifier(model, backend, seg.SegmentParams(), same_slide=one_slide)
        session = CountingSession(clf, one_slide=one_slide)
        results = []
        t0 = time.thread_time()
        for im in imgs:
            if not one_slide:
                res = clf.process(im)
            elif hasattr(focus, "grey_small"):  # as CountingSession.process does it
                full = cv2.cvtColor(im, cv2.COLOR_RGB2GRAY)
                session.motion.update(im, full)
                grey = focus.grey_small(full)
                session.gate.check(im, session.motion.last_move, grey)
                res = clf.process(im, grey=grey)
            else:
                session.motion.update(im)
                session.gate.check(im, session.motion.last_move)
                res = clf.process(im)
            results.append((res.labels, [d.box for d in res.detections], [d.crop for d in res.detections],
                            np.round(res.probabilities, 5).tolist(), res.ruler.diameter if res.ruler else None))
        total = time.thread_time() - t0
        n = len(imgs)
        click.echo(f"{'one slide' if one_slide else 'image folder'}: total {total / n * 1e3:.2f} ms/frame; "
                   + ", ".join(f"{k} {v / n * 1e3:.2f}" for k, v in spent.items()))
        click.echo(f"  results fingerprint {hashlib.sha1(pickle.dumps(results)).hexdigest()}")


if __name__ == "__main__":
    main()
