"""Where the red-cell stage's time goes, per stage, wall and process CPU (prints, writes nothing).

    python -m hemaedge.benchmarks.tools.rbc_stage_profile [--threads 1] [--frames 20]

Part 1: on Chula and BCCD test frames (first N of each): detection, crop cutting (`rbc_crops`),
`prepare_batch` and inference, p50 of wall and CPU ms. Part 2: one resized batch per frame vs fixed
batches of 4/8/12/16 with padding (40 slots for 36 cells), median of 15 calls. Used for the speed
notes in docs/redcells.md; the table of record is rbc_speed.md.
"""
from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np


def _tm():
    return time.perf_counter(), time.process_time()


@click.command()
@click.option("--rbc", "bundle", default="src/hemaedge/models/rbc", show_default=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--chula", default="../shared/data/chula_rbc12", type=click.Path(path_type=Path), show_default=True)
@click.option("--bccd", default="../shared/data/bccd", type=click.Path(path_type=Path), show_default=True)
@click.option("--frames", "n", default=20, show_default=True)
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1))
def main(bundle, chula, bccd, n, threads):
    import os

    from hemaedge.benchmarks.tools.rbc_speed import _frames
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.preprocess import prepare_batch, read_image_rgb
    from hemaedge.edge.rbc import detect_red_cells, rbc_crops
    from hemaedge.edge.rbc_morphology import RedCellClassifier
    from hemaedge.edge.ruler import red_cell_diameter

    click.echo(f"load average {os.getloadavg()}, threads {threads}")
    imgs = [read_image_rgb(p) for _, p in _frames(chula, bccd, n)]
    rbc = load_bundle(bundle)
    be = load_backend(rbc, threads=threads)
    side_factor = RedCellClassifier(rbc, be).side_factor
    t = {k: [] for k in ("detect", "crop", "prepare", "infer")}
    cells_n = []
    for i, img in enumerate(imgs[:3] + imgs):
        d = red_cell_diameter(img)
        a = _tm()
        cells, d = detect_red_cells(img, d)
        b = _tm()
        crops = rbc_crops(img, [c.centre for c in cells], d, rbc.contract.size, side_factor)
        c = _tm()
        batch = prepare_batch(crops, rbc.contract)
        e = _tm()
        be.predict(batch)
        f = _tm()
        if i >= 3:  # the first three are warm-up
            for k, (x, y) in zip(t, ((a, b), (b, c), (c, e), (e, f))):
                t[k].append(((y[0] - x[0]) * 1e3, (y[1] - x[1]) * 1e3))
            cells_n.append(len(cells))
    click.echo(f"{len(cells_n)} frames, red cells per frame median {np.median(cells_n):.1f}")
    for k, v in t.items():
        w, cpu = np.median(np.asarray(v), axis=0)
        click.echo(f"  {k:<8} wall p50 {w:7.2f} ms   CPU p50 {cpu:7.2f} ms")
    x = np.random.default_rng(0).integers(0, 255, (64, rbc.contract.size, rbc.contract.size, 3), dtype=np.uint8)

    def med(fn, reps=15):
        out = []
        for _ in range(reps):
            a = _tm()
            fn()
            b = _tm()
            out.append(((b[0] - a[0]) * 1e3, (b[1] - a[1]) * 1e3))
        return np.median(np.asarray(out), axis=0)

    be.predict(x[:36])
    click.echo("  one batch of 36 (resized input):      wall %.2f CPU %.2f ms" % tuple(med(lambda: be.predict(x[:36]))))
    for size in (4, 8, 12, 16):
        fixed = load_backend(rbc, threads=threads)
        fixed.predict(x[:size])
        runs = lambda: [fixed.predict(x[i:i + size]) for i in range(0, 40, size)]  # noqa: E731
        click.echo(f"  {-(-40 // size)} fixed batches of {size:>2} (36 cells padded):  wall %.2f CPU %.2f ms" % tuple(med(runs)))


if __name__ == "__main__":
    main()
