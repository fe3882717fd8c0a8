"""What the segmenter's platelet false alarms on BCCD are: a contact sheet and a count by kind.

    python -m hemaedge.benchmarks.tools.platelet_sheet --split train --split val

Every platelet detection of `edge.segment` (the device's per-field ruler, as
`segmentation_bccd`) that matches no VOC `Platelets` box at IoU >= 0.5 is a false alarm. Each is
put in one group, first that applies: *overlaps a VOC platelet* (IoU 0.1-0.5: a box-size
disagreement or one platelet found as two), *next to a white cell* (within 0.2 red-cell
diameters of a VOC WBC box: a granule or lobe, or a platelet lying on the cell), *cut by the
frame edge*, *elsewhere* (an unboxed platelet, a speck, a pale smear of stain: the sheet shows
which). Tiles: 120 px of the frame around the detection (red), VOC platelets green, VOC white
cells blue. Choose on train/val only; the test split is reported elsewhere, never looked at here.

With `--bundle B` (run_all: the packaged default) the false alarms are those of what the user
gets: the platelets the whole pipeline counts (`edge.pipeline.CellClassifier`: candidates the
classifier confirmed in their platelet-sized crop; `segmentation_bccd --bundle`); each tile then
shows the classifier's platelet probability.

Writes benchmarks/results/platelet_false_alarms.{jpg,json,md}.
"""
from __future__ import annotations

import datetime as dt
import os
from collections import Counter
from pathlib import Path

import click
import cv2
import numpy as np

from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.benchmarks.tools.segmentation_bccd import frame_ids, machine, matches, read_voc
from hemaedge.edge.preprocess import read_image_rgb
from hemaedge.edge.ruler import Ruler
from hemaedge.edge.segment import SegmentParams, iou, segment, work_copy

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ("overlaps a VOC platelet", "next to a white cell", "cut by the frame edge", "elsewhere")
CODES = dict(zip(GROUPS, ("OVL", "WBC", "EDGE", "ELSE")))
TILE, VIEW = 120, 120  # tile side on the sheet, frame pixels shown (1:1)


def _near(box, others, pad: float) -> bool:
    return any(not (box[2] + pad < o[0] or o[2] + pad < box[0] or box[3] + pad < o[1] or o[3] + pad < box[1])
               for o in others)


def group_of(det, gt: dict, rbc: float | None) -> str:
    if any(iou(det.box, b) > 0.1 for b in gt.get("Platelets", [])):
        return GROUPS[0]
    if _near(det.box, gt.get("WBC", []), 0.2 * (rbc or 0)):
        return GROUPS[1]
    if det.at_edge:
        return GROUPS[2]
    return GROUPS[3]


def false_alarms(data: Path, splits, params: SegmentParams, classifier=None):
    """(split, frame id, detection, group, the frame's red-cell diameter, platelet probability or
    None) of every false alarm: of the segmenter, or with `classifier` (a factory of
    `edge.pipeline.CellClassifier`, one per split) of the platelets the whole pipeline counts."""
    out = []
    for split in splits:
        ruler = Ruler(same_slide=False)
        clf = classifier() if classifier else None
        for fid in frame_ids(data, split):
            img = read_image_rgb(data / "JPEGImages" / f"{fid}.jpg")
            gt = read_voc(data / "Annotations" / f"{fid}.xml")
            if clf is None:
                work = work_copy(img, params)
                rbc = ruler.read(img, params, work).diameter
                plt = [(d, None) for d in segment(img, params, rbc_diameter=rbc, work=work) if d.kind == "platelet"]
            else:
                res = clf.process(img)
                rbc = res.ruler.diameter if res.ruler else None
                k = clf.classes.index("platelet")
                plt = [(d, float(p[k])) for d, x, p in zip(res.detections, res.decisions, res.probabilities)
                       if d.kind == "platelet" and x.counted]
            hit = matches([d.box for d, _ in plt], gt.get("Platelets", []), "iou")
            out += [(split, fid, d, group_of(d, gt, rbc), rbc, p) for i, (d, p) in enumerate(plt) if i not in hit]
    return out


def tile(data: Path, fid: str, det, group: str, platelet_p: float | None = None) -> np.ndarray:
    img = read_image_rgb(data / "JPEGImages" / f"{fid}.jpg").copy()
    gt = read_voc(data / "Annotations" / f"{fid}.xml")
    for name, colour in (("Platelets", (0, 200, 0)), ("WBC", (0, 0, 255))):
        for b in gt.get(name, []):
            cv2.rectangle(img, b[:2], (b[2] - 1, b[3] - 1), colour, 1)
    x0, y0, x1, y1 = det.box
    cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), (255, 0, 0), 1)
    h = VIEW // 2
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    pad = cv2.copyMakeBorder(img, h, h, h, h, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    t = cv2.resize(pad[cy:cy + VIEW, cx:cx + VIEW], (TILE, TILE), interpolation=cv2.INTER_NEAREST)
    label = f"{fid[-5:]} {CODES[group]}" + ("" if platelet_p is None else f" {platelet_p:.2f}")
    cv2.rectangle(t, (0, 0), (74 if platelet_p is None else 106, 15), (255, 255, 255), -1)  # readable over the black padding too
    cv2.putText(t, label, (3, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return t


def sheet(tiles: list[np.ndarray], cols: int = 12) -> np.ndarray:
    tiles = tiles + [np.full_like(tiles[0], 255)] * (-len(tiles) % cols)
    return np.vstack([np.hstack(tiles[i:i + cols]) for i in range(0, len(tiles), cols)])


@click.command()
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=lambda: os.environ.get("HEMAEDGE_BCCD", "../shared/data/bccd"), show_default="../shared/data/bccd")
@click.option("--split", "splits", multiple=True, type=click.Choice(["train", "val"]), default=("train", "val"),
              show_default=True, help="Never the test split: this sheet is for choosing rules.")
@click.option("--sheet", "sheet_path", type=click.Path(path_type=Path),
              help="Where the contact sheet goes  [default: OUT/platelet_false_alarms.jpg]")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="The false alarms of the platelets the whole pipeline counts with this bundle (run_all: the "
                   "packaged default), not of the segmenter alone.")
@click.option("--out", type=click.Path(path_type=Path), default=ROOT / "benchmarks" / "results",
              show_default="benchmarks/results")
def main(data, splits, sheet_path, bundle, out):
    """Contact sheet and count by kind of the platelet false alarms on BCCD train/val."""
    params = SegmentParams()
    sheet_path = sheet_path or out / "platelet_false_alarms.jpg"
    classifier, weights = None, "none (segmentation only)"
    if bundle:
        from hemaedge.edge.backends import load_backend
        from hemaedge.edge.bundle import load_bundle
        from hemaedge.edge.pipeline import CellClassifier

        b = load_bundle(bundle)
        backend = load_backend(b, threads=2)
        classifier = lambda: CellClassifier(b, backend, params)  # noqa: E731
        weights = (f"bundle `{b.manifest.get('name')}` ({(b.manifest.get('source') or {}).get('weights', 'unknown weights')}); "
                   "false alarms of the platelets the whole pipeline counts, tiles labelled with the platelet probability")
    found = false_alarms(data, splits, params, classifier)
    if not found:
        raise click.ClickException("no false alarms: nothing to draw")
    found.sort(key=lambda f: (GROUPS.index(f[3]), f[0], f[1]))
    sheet_path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(sheet_path), cv2.cvtColor(sheet([tile(data, fid, d, g, p) for _, fid, d, g, _, p in found]), cv2.COLOR_RGB2BGR),
                [cv2.IMWRITE_JPEG_QUALITY, 85])
    counts = {s: Counter(g for sp, _, _, g, _, _ in found if sp == s) for s in splits}
    cmd = "python -m hemaedge.benchmarks.tools.platelet_sheet " + " ".join(f"--split {s}" for s in splits) + (
        f" --bundle {bundle}" if bundle else "")
    report = {"date": dt.date.today().isoformat(), "machine": machine(), "command": cmd, "params": params.to_dict(),
              "counts": {s: {g: counts[s][g] for g in GROUPS} for s in splits},
              "false_alarms": [{"split": sp, "frame": fid, "box": list(d.box), "group": g, "at_edge": d.at_edge,
                                "score": round(d.score, 2), "area_rbc2": round(d.area / rbc ** 2, 4) if rbc else None,
                                "platelet_probability": None if p is None else round(p, 4)}
                               for sp, fid, d, g, rbc, p in found]}
    lines = [f"# Platelet false alarms on BCCD ({report['date']})", "", f"Command: `{cmd}`  ",
             f"Machine: {report['machine']}  ", f"Weights: {weights}.  ",
             f"Sheet: `{sheet_path.relative_to(ROOT) if sheet_path.is_relative_to(ROOT) else sheet_path}` (codes: "
             + ", ".join(f"{c} = {g}" for g, c in CODES.items()) + ").", "",
             "| split | " + " | ".join(GROUPS) + " | all |", "|---|" + "---|" * (len(GROUPS) + 1)]
    for s in splits:
        lines.append(f"| {s} | " + " | ".join(str(counts[s][g]) for g in GROUPS) + f" | {sum(counts[s].values())} |")
    write_result(out / "platelet_false_alarms", report, "\n".join(lines) + "\n")
    click.echo(f"{len(found)} false alarms; wrote {sheet_path} and {out / 'platelet_false_alarms.md'}")


if __name__ == "__main__":
    main()
