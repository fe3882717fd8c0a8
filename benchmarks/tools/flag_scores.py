"""Which per-cell score separates BCCD's wrong answers from its right ones? Scores the device can
compute from what the int8 bundle already gives, measured end to end on the packaged bundle.

    python -m hemaedge.benchmarks.tools.flag_scores --bundle src/hemaedge/models/default --name default

The bundle outputs temperature-scaled probabilities of each test-time view (`inference.views`,
flips for the default) and nothing else: no logits, no pooled features. So energy, max-logit and
feature (Mahalanobis) distances cannot be computed on the device from this bundle (`log p` is
the logits minus the unknown log-sum-exp, which is exactly what energy needs). What it can
compute, per nucleated cell (higher = more suspicious):

  msp            -log max p          (p = mean over the views; what `edge run` uses now)
  margin         1 - (p1 - p2)       (top-two gap of the view mean)
  entropy        -sum p log p        (of the view mean)
  worst-view     -log min_v p_v[top] (the least sure view about the answer the mean gives)
  view-split     share of views whose own top class is not the mean's
  crop-colour    Mahalanobis distance (shared Ledoit-Wolf covariance) of the prepared crop's
                 per-channel mean and std to those of right training-domain crops
  msp+colour     max(msp / its level, crop-colour / its level): either one over its level
  msp+review-classes  msp, and every erythroblast or immature-granulocyte call flagged (those
                 findings are reviewed in peripheral blood anyway; a clinical policy, not a score;
                 it came from BCCD val's error breakdown, so its BCCD val rates are not zero-shot)

Levels ("training-domain level"): each score's `--quantile` (0.95, as the bundle's review level)
over the right answers of BloodMNIST-128 val (nucleated classes, the training domain), so no
BCCD cell sets them. Flag rates at that level on BloodMNIST val, PBC fields end to end (the
training microscope) and BCCD val end to end. Flagged = score above the level, or classified
as platelet (a nucleated cell cannot be one), or the white cell not found (a wrong answer).
AUROC (scikit-learn `roc_auc_score`) of wrong-vs-right over the found cells; the trade-off curve
(`roc_curve`: wrong flagged vs right flagged on BCCD val) per score goes to the plot, and the
best BCCD val operating point with <= 15 % of right answers flagged is shown, labelled as chosen
on BCCD val (an upper bound for this score, not a level the device could fit). No test split is read.

Writes benchmarks/results/flag_scores_NAME.{json,md} and flag_scores_NAME.png.
"""
from __future__ import annotations

import csv
import datetime as dt
import os
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.benchmarks.tools.data_options import evaluation_sets

RESULTS = Path(__file__).resolve().parents[1] / "results"
SCORES = ("msp", "margin", "entropy", "worst-view", "view-split", "crop-colour", "msp+colour", "msp+review-classes")
BASE_SCORES = SCORES[:6]  # the rest are built from these and their levels
# classes a haematologist reviews whenever an analyser reports them in peripheral blood (nucleated
# red cells, immature granulocytes): flagging every such call is a clinical policy, not an OOD score
REVIEW_CLASSES = ("erythroblast", "immature_granulocyte")
GOAL_WRONG, GOAL_RIGHT = 0.90, 0.15  # issue 13: >= 90 % of wrong answers flagged, <= 15 % of right ones


def probability_scores(views: np.ndarray) -> dict[str, np.ndarray]:
    """Scores from per-view probabilities (V, N, C) of N cells; each (N,), higher = more suspicious."""
    v = np.asarray(views, np.float64)
    p = v.mean(axis=0)
    top = p.argmax(axis=1)
    srt = np.sort(p, axis=1)
    rows = np.arange(len(top))
    return {"msp": -np.log(np.clip(srt[:, -1], 1e-12, 1.0)),
            "margin": 1.0 - (srt[:, -1] - (srt[:, -2] if p.shape[1] > 1 else 0.0)),
            "entropy": -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(axis=1),
            "worst-view": -np.log(np.clip(v[:, rows, top].min(axis=0), 1e-12, 1.0)),
            "view-split": (v.argmax(axis=2) != top[None, :]).mean(axis=0)}


def crop_colour(batch: np.ndarray) -> np.ndarray:
    """Per-channel mean and std of each prepared crop (N, S, S, 3) -> (N, 6)."""
    x = np.asarray(batch, np.float64).reshape(len(batch), -1, batch.shape[-1])
    return np.concatenate([x.mean(axis=1), x.std(axis=1)], axis=1)


class _Recorder:
    """A backend whose predict keeps the last (stacked views) input and output."""

    def __init__(self, backend):
        self.backend, self.last_in, self.last_out = backend, None, None

    def predict(self, batch):
        self.last_in, self.last_out = batch, self.backend.predict(batch)
        return self.last_out


def _views_of(rec: _Recorder, n_views: int, n: int):
    out = np.asarray(rec.last_out).reshape(n_views, n, -1)
    return out, crop_colour(np.asarray(rec.last_in)[:n])  # the first view is the crop as prepared


def bloodmnist_cells(clf, rec, val_dir: Path, n: int | None) -> list[dict]:
    from hemaedge.edge.preprocess import prepare_batch, read_image_rgb
    from hemaedge.edge.tta import predict_views
    from hemaedge.train.data.subsets import spread

    files = [(f, c) for c in clf.classes if c != "platelet" for f in sorted((val_dir / c).glob("*.jpg"))]
    files = [files[i] for i in spread(len(files), n)]
    out = []
    for k in tqdm(range(0, len(files), 64), desc="BloodMNIST val", unit="batch"):
        chunk = files[k:k + 64]
        predict_views(rec.predict, prepare_batch([read_image_rgb(f) for f, _ in chunk], clf.contract), clf.views)
        v, col = _views_of(rec, len(clf.views), len(chunk))
        out += [{"label": c, "found": True, "views": v[:, i], "colour": col[i]} for i, (_, c) in enumerate(chunk)]
    return out


def _frame_cell(clf, rec, img, pick) -> dict:
    res = clf.process(img)
    k = pick(res.detections)
    if k is None:
        return {"found": False}
    v, col = _views_of(rec, len(clf.views), len(res.detections))
    return {"found": True, "views": v[:, k], "colour": col[k]}


def bccd_cells(clf, rec, bccd: Path, split: str) -> list[dict]:
    from hemaedge.benchmarks.tools.bccd_wbc import frames
    from hemaedge.benchmarks.tools.segmentation_bccd import read_voc
    from hemaedge.edge.preprocess import read_image_rgb
    from hemaedge.edge.segment import centre_in, iou

    out = []
    for r in tqdm(frames(bccd, split), desc=f"BCCD {split}", unit="frame"):
        gt = read_voc(bccd / "Annotations" / f"{r['frame']}.xml")["WBC"][0]

        def pick(dets, gt=gt):  # the WBC detection matching the label box, as bccd_wbc.score_frames
            best, best_iou = None, 0.0
            for k, d in enumerate(dets):
                if d.kind == "wbc":
                    v = iou(d.box, gt)
                    if (v >= 0.3 or centre_in(gt, d.centre)) and v >= best_iou:
                        best, best_iou = k, v
            return best

        out.append({"label": r["categories"], **_frame_cell(clf, rec, read_image_rgb(bccd / "JPEGImages" /
                                                                                     f"{r['frame']}.jpg"), pick)})
    return out


def pbc_cells(clf, rec, pbc: Path, n: int | None) -> list[dict]:
    from hemaedge.edge.preprocess import read_image_rgb
    from hemaedge.edge.segment import centre_in, nearest_to
    from hemaedge.train.data.subsets import spread

    rows = [r for r in csv.DictReader(open(pbc / "labels.csv", encoding="utf-8")) if r["class"] != "platelet"]
    out = []
    for r in tqdm([rows[i] for i in spread(len(rows), n)], desc="PBC fields", unit="field"):
        img = read_image_rgb(pbc / r["file"])
        h, w = img.shape[:2]

        def pick(dets, h=h, w=w):  # the central nucleated cell, as ood_rule.pbc_fields
            wbc = [d for d in dets if d.kind == "wbc"]
            near = nearest_to(wbc, (w / 2.0, h / 2.0))
            return dets.index(near) if near is not None and centre_in(near.box, (w / 2, h / 2)) else None

        out.append({"label": r["class"], **_frame_cell(clf, rec, img, pick)})
    return out


class ScoreSet:
    """All scores of a list of cells, with the crop-colour reference and levels fitted on `fit`."""

    def __init__(self, fit: list[dict], classes: list[str], quantile: float):
        from sklearn.covariance import LedoitWolf

        self.classes, self.quantile = classes, quantile
        right = [c for c in fit if self.right(c)]
        col = np.stack([c["colour"] for c in right])
        self.colour_mean, self.colour_prec = col.mean(axis=0), LedoitWolf().fit(col).precision_
        self.levels = {}
        s = self.raw(right)
        for name in BASE_SCORES:
            self.levels[name] = float(np.quantile(s[name], quantile))
        self.levels["msp+colour"] = 1.0  # each part divided by its own level
        self.levels["msp+review-classes"] = self.levels["msp"]

    def right(self, c: dict) -> bool:
        return c["found"] and self.classes[int(c["views"].mean(axis=0).argmax())] == c["label"]

    def raw(self, cells: list[dict]) -> dict[str, np.ndarray]:
        s = probability_scores(np.stack([c["views"] for c in cells], axis=1))
        d = np.stack([c["colour"] for c in cells]) - self.colour_mean
        s["crop-colour"] = np.sqrt(((d @ self.colour_prec) * d).sum(axis=1))
        return s

    def scores(self, cells: list[dict]) -> dict[str, np.ndarray]:
        s = self.raw(cells)
        lv = self.levels
        s["msp+colour"] = np.maximum(s["msp"] / lv["msp"], s["crop-colour"] / lv["crop-colour"])
        review = np.array([self.classes[int(c["views"].mean(axis=0).argmax())] in REVIEW_CLASSES for c in cells])
        s["msp+review-classes"] = np.where(review, max(lv["msp"], float(s["msp"].max(initial=0.0))) + 1.0, s["msp"])
        return s


def evaluate(cells: list[dict], ss: ScoreSet, per_cell: bool = False) -> dict:
    """Per score: AUROC wrong-vs-right (found cells) and flag rates at the training-domain level;
    `per_cell`: also each cell's label, answer and scores (for trying combinations later)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    found = [c for c in cells if c["found"]]
    missed = len(cells) - len(found)
    wrong = np.array([not ss.right(c) for c in found])
    plat = np.array([ss.classes[int(c["views"].mean(axis=0).argmax())] == "platelet" for c in found])
    n_wrong, n_right = int(wrong.sum()) + missed, int((~wrong).sum())
    out = {"cells": len(cells), "right": n_right, "wrong": n_wrong, "scores": {}}
    s = ss.scores(found)
    for name in SCORES:
        flag = plat | (s[name] > ss.levels[name])
        v = {"level": ss.levels[name],
             "wrong_flagged": (int(flag[wrong].sum()) + missed) / n_wrong if n_wrong else None,
             "right_flagged": float(flag[~wrong].mean()) if n_right else None}
        if wrong.any() and (~wrong).any():
            v["auroc"] = float(roc_auc_score(wrong, s[name]))
            # the curve with the platelet-class and not-found flags that every rule has
            score = np.where(plat, s[name].max() + 1.0, s[name])  # platelet class: always flagged
            fpr, tpr, thr = roc_curve(wrong, score, drop_intermediate=False)
            tw = (tpr * wrong.sum() + missed) / n_wrong
            v["curve"] = {"right_flagged": [round(float(x), 4) for x in fpr],
                          "wrong_flagged": [round(float(x), 4) for x in tw]}
            ok = fpr <= GOAL_RIGHT
            k = int(np.flatnonzero(ok)[np.argmax(tw[ok])])
            v["best_at_15"] = {"level_chosen_on_this_set": float(thr[k]), "wrong_flagged": float(tw[k]),
                               "right_flagged": float(fpr[k])}
        out["scores"][name] = v
    if per_cell:
        out["per_cell"] = [{"label": c["label"], "found": c["found"]} for c in cells]
        for row, k in zip([r for r in out["per_cell"] if r["found"]], range(len(found))):
            row.update(top=ss.classes[int(found[k]["views"].mean(axis=0).argmax())],
                       scores={n: round(float(s[n][k]), 5) for n in SCORES})
    return out


def plot(bccd: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for name, v in bccd["scores"].items():
        if "curve" in v:
            ax.step(v["curve"]["right_flagged"], v["curve"]["wrong_flagged"], where="post",
                    label=f"{name} (AUROC {v['auroc']:.3f})")
            ax.plot([v["right_flagged"]], [v["wrong_flagged"]], "o", color=ax.lines[-1].get_color())
    ax.axvline(GOAL_RIGHT, color="grey", ls="--", lw=0.8)
    ax.axhline(GOAL_WRONG, color="grey", ls="--", lw=0.8)
    ax.fill_between([0, GOAL_RIGHT], GOAL_WRONG, 1.0, color="green", alpha=0.08, label="goal (issue 13)")
    ax.set(xlabel="right answers flagged", ylabel="wrong answers flagged (not found = flagged)", xlim=(0, 1),
           ylim=(0, 1.01), title=title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def to_markdown(r: dict) -> str:
    pct = lambda x: "–" if x is None else f"{100 * x:.1f}%"
    lines = [f"# Flag scores from the bundle's outputs ({r['date']})", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}  ", f"Bundle: `{r['bundle']}` ({r['weights']}); test-time views `{r['views']}`, "
             f"temperature {r['temperature']}.", "",
             "Scores (higher = more suspicious; p = mean over the views): msp = -log max p (what `edge run` uses); "
             "margin = 1 - (p1 - p2); entropy of p; worst-view = -log of the least sure view's probability of the "
             "mean's answer; view-split = share of views whose top class differs; crop-colour = Mahalanobis "
             "distance of the prepared crop's channel means/stds to right training-domain crops; msp+colour = "
             "either of the two over its level; msp+review-classes = msp, and every erythroblast / immature "
             "granulocyte call flagged (a clinical review policy suggested by BCCD val's errors, so its BCCD val "
             "rates are chosen on BCCD val). Energy, max-logit and feature distances need logits or features, "
             "which the bundle does not output.", "",
             f"Level: each score's {100 * r['quantile']:g}% quantile over the right answers of BloodMNIST-128 val "
             f"({r['fit_cells']} nucleated cells, spread; the training domain). Flagged = above the level, or "
             "classified as platelet, or (end to end) the white cell not found. AUROC: wrong vs right, found "
             "cells, scikit-learn. *Best on BCCD val* = the most wrong answers flagged with <= 15% of right ones, "
             "the level chosen on BCCD val itself (in-sample: an upper bound, not a device level). "
             "Goal (issue 13): >= 90% wrong flagged with <= 15% right flagged on BCCD.", "",
             "| score | level | BCCD val AUROC | BCCD val wrong / right flagged | best on BCCD val (level) | "
             "PBC AUROC | PBC wrong / right flagged | BloodMNIST val wrong / right flagged |",
             "|---|---|---|---|---|---|---|---|"]
    b, p, m = (r["sets"][k] for k in ("bccd_val", "pbc", "bloodmnist_val"))
    for name in SCORES:
        bv, pv, mv = b["scores"][name], p["scores"][name], m["scores"][name]
        best = bv.get("best_at_15")
        lines.append(f"| {name} | {bv['level']:.4g} | {bv.get('auroc', float('nan')):.3f} | "
                     f"{pct(bv['wrong_flagged'])} / {pct(bv['right_flagged'])} | "
                     + (f"{pct(best['wrong_flagged'])} / {pct(best['right_flagged'])} "
                        f"({best['level_chosen_on_this_set']:.4g})" if best else "–")
                     + f" | {pv.get('auroc', float('nan')):.3f} | {pct(pv['wrong_flagged'])} / "
                       f"{pct(pv['right_flagged'])} | {pct(mv['wrong_flagged'])} / {pct(mv['right_flagged'])} |")
    lines += ["", f"Cells: BCCD val {b['cells']} ({b['right']} right, {b['wrong']} wrong), PBC fields "
                  f"{p['cells']} ({p['right']} right, {p['wrong']} wrong), BloodMNIST val {m['cells']} "
                  f"({m['right']} right, {m['wrong']} wrong). With {b['wrong']} wrong BCCD val answers one cell "
                  f"is {100 / max(1, b['wrong']):.1f} points of 'wrong flagged'.", "",
              f"Trade-off curves (BCCD val, wrong flagged vs right flagged; dots: the training-domain level): "
              f"`{r['plot']}`.", ""]
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--bundle", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--name", required=True, help="Results go to benchmarks/results/flag_scores_NAME.{json,md,png}.")
@evaluation_sets
@click.option("--val-spread", type=click.IntRange(50), default=800, show_default=True,
              help="BloodMNIST val images (nucleated, spread over the split) that set the levels.")
@click.option("--pbc-spread", type=click.IntRange(1), default=300, show_default=True)
@click.option("--quantile", type=click.FloatRange(0.5, 0.999), default=0.95, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default="benchmarks/results")
def main(bundle, name, bccd, pbc, bloodmnist128, val_spread, pbc_spread, quantile, threads, out):
    """AUROC and flag rates of cheap per-cell scores on BCCD val, PBC and BloodMNIST val."""
    from hemaedge.benchmarks.tools.bccd_wbc import _Model
    from hemaedge.benchmarks.tools.segmentation_bccd import machine
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.pipeline import CellClassifier

    b = load_bundle(bundle)
    rec = _Recorder(load_backend(b, threads=threads))
    clf = CellClassifier(_Model(list(b.classes), b.contract, b.manifest), rec)
    load = os.getloadavg()[0]
    val = bloodmnist_cells(clf, rec, bloodmnist128 / "val", val_spread)
    ss = ScoreSet(val, clf.classes, quantile)
    sets = {"bloodmnist_val": evaluate(val, ss),
            "bccd_val": evaluate(bccd_cells(clf, rec, bccd, "val"), ss, per_cell=True),
            "pbc": evaluate(pbc_cells(clf, rec, pbc, pbc_spread), ss)}
    png = out / f"flag_scores_{name}.png"
    out.mkdir(parents=True, exist_ok=True)
    weights = (b.manifest.get("source") or {}).get("weights", "unknown weights")
    plot(sets["bccd_val"], png, f"BCCD val, {b.manifest.get('name', Path(bundle).name)}")
    report = {"date": dt.date.today().isoformat(), "machine": machine(), "load_average_at_start": round(load, 2),
              "bundle": str(bundle), "weights": weights, "views": clf.views_name,
              "temperature": (b.manifest.get("output") or {}).get("temperature"), "quantile": quantile,
              "fit_cells": len(val), "plot": f"benchmarks/results/{png.name}",
              "levels": ss.levels, "colour_reference": {"mean": ss.colour_mean.round(4).tolist()},
              "command": f"python -m hemaedge.benchmarks.tools.flag_scores --bundle {bundle} --name {name} "
                         f"--val-spread {val_spread} --pbc-spread {pbc_spread} --quantile {quantile}",
              "sets": sets}
    write_result(out / f"flag_scores_{name}", report, to_markdown(report))
    click.echo(to_markdown(report))


if __name__ == "__main__":
    main()
