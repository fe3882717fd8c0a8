"""Label-free per-run adaptation of the packaged default on a new microscope: does it help? (issue #13)

    python -m hemaedge.benchmarks.tools.run_adapt_study --bundle src/hemaedge/models/default \\
        --cache ~/hemaedge-runs/align/features --name default

A run on a new microscope shows many cells before its count is final. Each method below uses only
what the run itself has seen (no labels) and the bundle's own numbers:

  none          the bundle as it is;
  align         feature-statistics alignment (AdaBN / CORAL in spirit, per channel): the pooled
                backbone features (the classifier layer's input) of the run's cells are standardised
                with the run's mean / std and mapped to the training set's (BloodMNIST-128 train);
  align mean    the same, means only;
  EM prior      label-shift re-estimation (Saerens et al. 2002): EM on the run's posteriors moves the
                class prior from the training set's to the run's;
  align + EM    both;
  prior-aware align  the alignment's target is the training features' mean / std *under the run's
                class mix* (per-class training statistics mixed with the EM prior, iterated), so a run
                of mostly neutrophils is not pulled toward the training set's class mix;
  align to normal mix  the same with a fixed prior, a normal adult differential (NORMAL_MIX);
  crop scale by confidence  the run's white cells cropped at x0.7..x1.1 of the device's crop side
                (the ruler's); the run keeps the scale whose answers the model is surest of on average
                over all its cells (mean top probability; no labels) and answers every cell at it, in
                hindsight (a device would keep every cell's answer at every scale until the run ends);
  crop scale online  what a streaming device could do instead: cells in run order, each answered at
                the scale leading so far, the scale fixed after 20 / 50 cells or never;
  crop scales 0.8-1 averaged  no choice: probabilities averaged over x0.8, x0.9, x1;
  colour anchors of the frame / the run's median  the colour normalisation's anchors (background and
                red-cell colour, edge.preprocess.colour_anchors) from the whole frame, or the median of
                the run's frames (whole sets only), instead of from each crop as the bundle does.
The run's statistics are shrunk toward the training set's by `SHRINK` pseudo-cells (few cells: little
change). Features: the bundle's int8 backbone through LiteRT (train/adapt_bundle.BundleHead), every
test-time view of the bundle; probabilities: softmax((f @ W + b) / T), averaged over the views,
exactly the bundle's answer for unadapted features.

Cells: BCCD frames of a split with one white-cell label (the detection matching the WBC box, crops as
the device cuts them; a frame whose WBC is not found counts as wrong), PBC val fields (the central
cell), BloodMNIST-128 val (pre-cropped). PBC is the training microscope: its runs must stay as they are,
checked with the whole split and with runs of a normal blood differential (mostly neutrophils and
lymphocytes, drawn from the PBC fields) since a run's class mix differs from the training set's.
Runs of 10 / 20 / 50 cells: `--draws` random runs of that many cells of the set, each adapted on its
own cells; "all": the whole set as one run (in file order: the order the online methods see).

Choose on BCCD val / train; `--split test` is for the one report at the end.
Writes benchmarks/results/run_adapt_NAME.{json,md}.
"""
from __future__ import annotations

import csv
import datetime as dt
import os
from collections import Counter
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.benchmarks.tools.segmentation_bccd import machine, read_voc

RESULTS = Path(__file__).resolve().parents[1] / "results"
SHRINK = 10.0      # pseudo-cells of training statistics mixed into a run's estimate
EM_STEPS = 50
PRIOR_ROUNDS = 3   # prior-aware alignment: EM prior -> target statistics -> features, repeated
EPS = 1e-3
# a normal adult blood differential (white cells, %), for PBC runs with a realistic class mix
NORMAL_MIX = {"neutrophil": 60, "lymphocyte": 30, "monocyte": 6, "eosinophil": 3, "basophil": 1}
# colour anchors (edge.preprocess.colour_anchors) estimated on the whole frame / as the median of the run's
# frames, instead of on each crop as the bundle (and its training) does (the run's median: whole sets only)
FRAME_COLOUR, RUN_COLOUR = "frame_colour", "run_colour"
COLOUR_METHODS = {"colour anchors of the frame": FRAME_COLOUR, "colour anchors: the run's median": RUN_COLOUR}
METHODS = ("none", "align", "align mean", "EM prior", "align + EM", "prior-aware align", "prior-aware align + EM",
           "align to normal mix", "crop scale by confidence", "crop scale by confidence + EM",
           "crop scale online, fixed after 20", "crop scale online, fixed after 50",
           "crop scale online, never fixed", "crop scales 0.8-1 averaged", *COLOUR_METHODS)
SIZES = (10, 20, 50, None)
# crop scales (x the device's crop side) a run may choose among by its own mean confidence
SCALES = (0.7, 0.8, 0.9, 1.0, 1.1)


# ------------------------------------------------------------------------------------------- features

def _matched_crops(clf, img, gt_box=None) -> dict | None:
    """{crop scale: crop} of the labelled cell's detection (zero_shot_errors._matched), or None."""
    from hemaedge.benchmarks.tools.zero_shot_errors import _matched
    from hemaedge.edge.segment import extract_crop

    d = _matched(clf, img, gt_box)
    if d is None:
        return None
    from hemaedge.edge.preprocess import colour_anchors

    cx, cy, side = d.crop
    return {"anchors": colour_anchors(img),
            **{s: extract_crop(img, (cx, cy, max(8, int(round(side * s))))) for s in SCALES}}


def extract(bundle_path: Path, data: Path, cache: Path, bccd_splits, threads: int) -> dict:
    """Features (views, cells, F) of every set, cached in CACHE/<set>.npz (found: cell found at all)."""
    from hemaedge.benchmarks.tools.bccd_wbc import _Model, frames
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.pipeline import CellClassifier
    from hemaedge.edge.preprocess import batch_tensor, preprocess_batch, read_image_rgb
    from hemaedge.edge.tta import bundle_views, dihedral_view
    from hemaedge.train.adapt_bundle import BundleHead
    from hemaedge.train.adapt_head import view_features

    head = BundleHead(bundle_path, threads=threads)
    b = head.bundle
    _, views = bundle_views(b.manifest)
    backend = load_backend(b, threads=threads)

    def device():  # one per set, as one run: the ruler keeps state from field to field
        return CellClassifier(_Model(list(b.classes), b.contract, b.manifest), backend)
    cache.mkdir(parents=True, exist_ok=True)
    sets = {}

    def save(name, crops, labels, found):
        """crops: a list of crops, or of {scale: crop} (features per scale: feats_<scale>)."""
        by_scale = {s: [c[s] for c in crops] for s in SCALES} if crops and isinstance(crops[0], dict) else {1.0: crops}
        arrays = {}
        for s, cs in by_scale.items():
            f = view_features(head, cs, b.contract, views) if cs else np.zeros((len(views), 0, 0), np.float32)
            arrays["feats" if s == 1.0 else f"feats_{s:g}"] = f.astype(np.float32)
        if crops and isinstance(crops[0], dict):  # whole frames: colour anchors of the frame / of the run
            frame_anchors = [c["anchors"] for c in crops]
            run_anchors = np.median(np.stack(frame_anchors), axis=0)
            for key, anchors in ((FRAME_COLOUR, frame_anchors), (RUN_COLOUR, [run_anchors] * len(crops))):
                x = batch_tensor(preprocess_batch([c[1.0] for c in crops], b.contract, np.stack(anchors)), b.contract)
                arrays[f"feats_{key}"] = np.stack([head.predict(np.ascontiguousarray(dihedral_view(x, k, axes=(1, 2))))
                                                   for k in views]).astype(np.float32)
        np.savez_compressed(cache / f"{name}.npz", labels=np.array(labels), found=np.array(found, bool), **arrays)

    bm = data / "bloodmnist128"
    for split in ("train", "val"):
        name = f"bloodmnist_{split}"
        if not (cache / f"{name}.npz").exists():
            files = sorted((bm / split).glob("*/*.jpg"))
            save(name, [read_image_rgb(f) for f in tqdm(files, desc=name)], [f.parent.name for f in files],
                 [True] * len(files))
    if not (cache / "pbc_val.npz").exists():
        rows = list(csv.DictReader(open(data / "pbc_raw_val" / "labels.csv", encoding="utf-8")))
        crops, labels, found, clf = [], [], [], device()
        for r in tqdm(rows, desc="PBC fields"):
            c = _matched_crops(clf, read_image_rgb(data / "pbc_raw_val" / r["file"]))
            found.append(c is not None)
            labels.append(r["class"])
            if c is not None:
                crops.append(c)
        save("pbc_val", crops, labels, found)
    for split in bccd_splits:
        name = f"bccd_{split}"
        if (cache / f"{name}.npz").exists():
            continue
        crops, labels, found, clf = [], [], [], device()
        for r in tqdm(frames(data / "bccd", split), desc=name):
            img = read_image_rgb(data / "bccd" / "JPEGImages" / f"{r['frame']}.jpg")
            c = _matched_crops(clf, img, read_voc(data / "bccd" / "Annotations" / f"{r['frame']}.xml")["WBC"][0])
            found.append(c is not None)
            labels.append(r["categories"])
            if c is not None:
                crops.append(c)
        save(name, crops, labels, found)
    for name in ["bloodmnist_train", "bloodmnist_val", "pbc_val", *[f"bccd_{s}" for s in bccd_splits]]:
        z = np.load(cache / f"{name}.npz")
        sets[name] = {"labels": [str(x) for x in z["labels"]], "found": z["found"], "feats": z["feats"],
                      "scales": {s: z["feats" if s == 1.0 else f"feats_{s:g}"] for s in SCALES
                                 if ("feats" if s == 1.0 else f"feats_{s:g}") in z.files},
                      "colour": {k: z[f"feats_{k}"] for k in (FRAME_COLOUR, RUN_COLOUR) if f"feats_{k}" in z.files}}
    return {"sets": sets, "w": head.w0, "b": head.b0, "temperature": float(b.output.get("temperature") or 1.0),
            "classes": list(b.classes), "manifest": b.manifest}


# ------------------------------------------------------------------------------------------- methods

def training_stats(feats: np.ndarray, labels: list[str], classes: list[str]) -> dict:
    """Per-channel mean / variance of the training features over all views, overall and per class."""
    lab = np.array([classes.index(c) for c in labels])
    f = feats.astype(np.float64)
    mu = f.mean((0, 1))
    var = f.var((0, 1))
    mu_c = np.stack([f[:, lab == k].mean((0, 1)) for k in range(len(classes))])
    m2_c = np.stack([(f[:, lab == k] ** 2).mean((0, 1)) for k in range(len(classes))])
    prior = np.bincount(lab, minlength=len(classes)) / len(lab)
    return {"mean": mu, "var": var, "class_mean": mu_c, "class_m2": m2_c, "prior": prior, "classes": list(classes)}


def probs(feats: np.ndarray, w, b, t: float) -> np.ndarray:
    """The classifier layer's posteriors (temperature t) of (views, cells, F) features, averaged over the views."""
    from hemaedge.edge.preprocess import softmax

    return softmax((feats @ w + b) / t).mean(0)


def em_prior(p: np.ndarray, source_prior: np.ndarray, steps: int = EM_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Saerens et al. (2002): the run's class prior and the posteriors re-weighted to it."""
    prior = source_prior.copy()
    q = p
    for _ in range(steps):
        q = p * (prior / source_prior)
        q /= q.sum(1, keepdims=True)
        prior = (q.sum(0) + 1e-3) / (len(q) + 1e-3 * len(prior))  # a hair of smoothing: no class at 0
    return prior, q


def align(feats: np.ndarray, stats: dict, target_mean, target_var, std: bool = True) -> np.ndarray:
    """The run's features standardised with the run's (shrunk) statistics, mapped to the target's."""
    n = feats.shape[1]
    f = feats.astype(np.float64)
    run_mu = (n * f.mean((0, 1)) + SHRINK * target_mean) / (n + SHRINK)
    if not std:
        return (f - run_mu + target_mean).astype(np.float32)
    run_var = (n * f.var((0, 1)) + SHRINK * target_var) / (n + SHRINK)
    scale = np.sqrt(target_var + EPS) / np.sqrt(run_var + EPS)
    return ((f - run_mu) * scale + target_mean).astype(np.float32)


def choose_scale(by_scale: dict, w, b, t: float) -> tuple[float, np.ndarray]:
    """The crop scale whose answers the model is surest of, on average over the run (no labels),
    and the run's posteriors at that scale."""
    ps = {s: probs(f, w, b, t) for s, f in by_scale.items() if isinstance(s, float)}
    best = max(ps, key=lambda s: float(ps[s].max(1).mean()))
    return best, ps[best]


def online_scale(by_scale: dict, w, b, t: float, fix_after: int) -> np.ndarray:
    """What a streaming device could do: cells in run order, each answered at the scale leading so far
    (mean top probability of the cells seen, itself included; ties: x1), the scale fixed once
    `fix_after` cells are seen."""
    ps = {s: probs(f, w, b, t) for s, f in by_scale.items() if isinstance(s, float)}
    sums = {s: 0.0 for s in ps}
    fixed, out = None, []
    for i in range(len(ps[1.0])):
        if fixed is None:
            for s in ps:
                sums[s] += float(ps[s][i].max())
            lead = max(ps, key=lambda s: (sums[s], s == 1.0))
            fixed = lead if i + 1 >= fix_after else None
        out.append(ps[fixed if fixed is not None else lead][i])
    return np.stack(out)


def mix_prior(mix: dict, classes: list[str]) -> np.ndarray:
    p = np.array([float(mix.get(c, 0.0)) for c in classes])
    return p / p.sum()


def adapt(method: str, by_scale: dict, stats: dict, w, b, t: float) -> np.ndarray:
    """The posteriors (cells, classes) of one run's cells under `method`; by_scale: {crop scale: features}."""
    feats = by_scale[1.0]
    if feats.shape[1] == 0:
        return np.zeros((0, len(b)))
    src = stats["prior"]
    if method.startswith("crop scale online"):
        fix_after = int(method.rsplit(" ", 1)[1]) if "fixed after" in method else 10 ** 9
        return online_scale(by_scale, w, b, t, fix_after)
    if method in COLOUR_METHODS:
        return probs(by_scale[COLOUR_METHODS[method]], w, b, t)
    if method == "crop scales 0.8-1 averaged":
        return np.mean([probs(by_scale[s], w, b, t) for s in (0.8, 0.9, 1.0) if s in by_scale], axis=0)
    if method.startswith("crop scale by confidence"):
        best, p = choose_scale(by_scale, w, b, t)
        return em_prior(p, src)[1] if method.endswith("+ EM") else p
    if method == "align to normal mix":
        prior = mix_prior(NORMAL_MIX, stats["classes"])
        mu = prior @ stats["class_mean"]
        return probs(align(feats, stats, mu, np.maximum(prior @ stats["class_m2"] - mu ** 2, 0.0)), w, b, t)
    if method == "none":
        return probs(feats, w, b, t)
    if method in ("align", "align mean", "align + EM"):
        p = probs(align(feats, stats, stats["mean"], stats["var"], std=method != "align mean"), w, b, t)
        return em_prior(p, src)[1] if method == "align + EM" else p
    if method == "EM prior":
        return em_prior(probs(feats, w, b, t), src)[1]
    if method.startswith("prior-aware align"):
        p = probs(feats, w, b, t)
        for _ in range(PRIOR_ROUNDS):
            prior, _ = em_prior(p, src)
            mu = prior @ stats["class_mean"]
            var = np.maximum(prior @ stats["class_m2"] - mu ** 2, 0.0)
            p = probs(align(feats, stats, mu, var), w, b, t)
        return em_prior(p, src)[1] if method.endswith("+ EM") else p
    raise ValueError(method)


# ------------------------------------------------------------------------------------------- runs

def score(method, s: dict, idx: np.ndarray, stats, w, b, t, classes) -> tuple[int, int, np.ndarray, list, float]:
    """(right, cells, posteriors of the found cells, their labels, crop scale chosen) of one run:
    cells `idx` of set `s`."""
    found = s["found"][idx]
    pos = np.cumsum(s["found"]) - 1  # row of each found cell in feats
    rows = pos[idx[found]]
    by_scale = {k: f[:, rows] for k, f in {**s["scales"], **s["colour"]}.items()}
    p = adapt(method, by_scale, stats, w, b, t)
    scale = choose_scale(by_scale, w, b, t)[0] if method.startswith("crop scale by") and len(rows) else 1.0
    labels = [s["labels"][i] for i in idx[found]]
    right = int(sum(classes[k] == y for k, y in zip(p.argmax(1), labels)))
    return right, len(idx), p, labels, scale


def runs_of(n_cells: int, size, draws: int, rng, labels=None, mix=None) -> list[np.ndarray]:
    """Index sets of the runs: the whole set once (size None, no mix), or `draws` random runs."""
    if size is None and mix is None:
        return [np.arange(n_cells)]
    out = []
    for _ in range(draws):
        if mix is None:
            out.append(rng.choice(n_cells, size, replace=False))
            continue
        names = list(mix)
        share = np.array([mix[k] for k in names], float)
        counts = rng.multinomial(size, share / share.sum())
        pick = [rng.choice(np.flatnonzero(np.array(labels) == k), c, replace=False) for k, c in zip(names, counts)]
        out.append(np.concatenate(pick).astype(int))
    return out


def flags(p: np.ndarray, labels: list, n_missing: int, classes, manifest) -> dict:
    """Right / wrong answers flagged (confidence + OOD: what `edge run` does), via bccd_wbc.flag_rates."""
    from hemaedge.benchmarks.tools.bccd_wbc import flag_rates

    ood = manifest.get("ood") or {}
    per = [{"found": True, "label": y, "top": classes[int(np.argmax(q))], "probabilities": q.tolist()}
           for q, y in zip(p, labels)] + [{"found": False}] * n_missing
    return flag_rates(per, classes, "confidence + OOD", ood.get("unidentified_threshold"), ood.get("threshold"))


def study(x: dict, draws: int, seed: int, bccd_splits) -> dict:
    classes, w, b, t = x["classes"], x["w"], x["b"], x["temperature"]
    tr = x["sets"]["bloodmnist_train"]
    stats = training_stats(tr["feats"], tr["labels"], classes)
    evals = [(f"bccd_{s}", f"BCCD {s}", None) for s in bccd_splits] + [
        ("pbc_val", "PBC val fields", None), ("pbc_val", "PBC val, normal-differential runs", NORMAL_MIX),
        ("bloodmnist_val", "BloodMNIST val", None)]
    out = {"training": {"cells": len(tr["labels"]), "views": int(tr["feats"].shape[0]),
                        "prior": dict(zip(classes, np.round(stats["prior"], 4).tolist()))}, "sets": {}}
    for key, title, mix in evals:
        s = x["sets"][key]
        res = {}
        for method in tqdm(METHODS, desc=title):
            if method in COLOUR_METHODS and COLOUR_METHODS[method] not in s["colour"]:
                continue  # pre-cropped images: no frame to take colours from
            rows = {}
            for size in SIZES:
                if COLOUR_METHODS.get(method) == RUN_COLOUR and (size is not None or mix is not None):
                    rows["all" if size is None else str(size)] = None  # anchors of the whole set only
                    continue
                n_draw = draws if size is not None or mix is not None else 1
                rng = np.random.default_rng(seed)  # the same runs for every method
                size_run = size if size is not None else 100
                acc = []
                per_class = {}
                all_p, all_y, missing, chosen = [], [], 0, []
                for idx in runs_of(len(s["labels"]), size_run if (size or mix) else None, n_draw, rng,
                                   s["labels"], mix):
                    right, n, p, labels, scale = score(method, s, idx, stats, w, b, t, classes)
                    chosen.append(f"{scale:g}")
                    acc.append(right / n)
                    all_p.append(p)
                    all_y += labels
                    missing += n - len(labels)
                    for k, y in zip(p.argmax(1), labels):
                        r = per_class.setdefault(y, [0, 0])
                        r[0] += classes[k] == y
                        r[1] += 1
                row = {"accuracy": round(float(np.mean(acc)), 4), "runs": len(acc), "size": size_run if (size or mix) else None,
                       "accuracy_sd": round(float(np.std(acc)), 4),
                       "per_class": {k: v for k, v in sorted(per_class.items())},
                       "scales_chosen": dict(Counter(chosen).most_common())}
                if size is None:
                    row["flags"] = flags(np.concatenate(all_p), all_y, missing, classes, x["manifest"])
                rows["all" if size is None else str(size)] = row
            res[method] = rows
        out["sets"][title] = {"cells": len(s["labels"]), "found": int(s["found"].sum()), "mix": mix, "methods": res}
    return out


def to_markdown(r: dict) -> str:
    pct = lambda v: f"{100 * v:.1f}%"
    lines = [f"# Label-free per-run adaptation of the default bundle ({r['date']})", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}  ",
             f"Bundle: `{r['bundle']}` ({r['bundle_name']}). Training statistics: BloodMNIST-128 train, "
             f"{r['training']['cells']} cells x {r['training']['views']} views (the bundle's test-time views). "
             f"Run statistics shrunk toward the training set's by {SHRINK:g} pseudo-cells. Accuracy = top class "
             "against the label (no unidentified rule); a BCCD frame whose WBC is not found / a PBC field whose "
             "central cell is not found counts as wrong. Runs of 10/20/50 cells: mean over "
             f"{r['draws']} random runs (seed {r['seed']}); *normal-differential runs*: {r['draws']} runs of 100 PBC "
             "fields drawn with the class mix " + ", ".join(f"{k} {v}%" for k, v in NORMAL_MIX.items()) +
             " (the 'all' column); methods: see the tool's docstring. The small-run columns score each run's "
             "cells after adapting on those same cells (label-free, so allowed, but the choice among scales "
             "favours the cells it was made on); 'all' is one run in file order, the order the online methods "
             "see. Flagged = `edge run`'s rule (confidence + the bundle's OOD levels, not recalibrated after "
             "adaptation)." + (" BCCD test: reported once, after the choice on BCCD val / train; never used to "
                               "choose." if any(t.endswith("test") for t in r["sets"]) else ""), ""]
    for title, s in r["sets"].items():
        lines += [f"## {title} ({s['cells']} cells, {s['found']} found)", "",
                  "| method | 10 cells | 20 cells | 50 cells | all | wrong flagged (all) | right flagged (all) |",
                  "|---|---|---|---|---|---|---|"]
        for m, rows in s["methods"].items():
            fl = (rows["all"] or {}).get("flags")
            cells = [pct(rows[k]["accuracy"]) if rows[k] else "–" for k in ("10", "20", "50", "all")]
            lines.append(f"| {m} | " + " | ".join(cells) + (
                f" | {fl['wrong_flagged_n']}/{fl['wrong']} | {fl['right_flagged_n']}/{fl['right']} |" if fl else " | – | – |"))
        lines += ["", "Per class, all (right / cells found):", "",
                  "| method | " + " | ".join(sorted(s["methods"]["none"]["all"]["per_class"])) + " |",
                  "|---|" + "---|" * len(s["methods"]["none"]["all"]["per_class"])]
        for m, rows in s["methods"].items():
            if not rows["all"]:
                continue
            pc = rows["all"]["per_class"]
            lines.append(f"| {m} | " + " | ".join(f"{pc[c][0]}/{pc[c][1]}" for c in sorted(pc)) + " |")
        lines.append("")
    return "\n".join(lines)


@click.command()
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=Path("src/hemaedge/models/default"), show_default=True)
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path),
              default=lambda: Path(os.environ.get("HEMAEDGE_SHARED_DATA", "../shared/data")))
@click.option("--cache", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="feature cache (outside the repository)")
@click.option("--split", "splits", multiple=True, default=("val", "train"), show_default=True,
              type=click.Choice(["train", "val", "test"]), help="BCCD splits (test: the one report at the end)")
@click.option("--draws", type=int, default=200, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--name", default="default", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=RESULTS, show_default=True)
def main(bundle, data, cache, splits, draws, seed, threads, name, out):
    """Label-free per-run adaptation (feature alignment, EM class prior) on BCCD, PBC and BloodMNIST."""
    x = extract(bundle, data, cache.expanduser(), splits, threads)
    r = study(x, draws, seed, splits)
    r.update(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), machine=machine(),
             bundle=str(bundle), bundle_name=x["manifest"].get("name"), draws=draws, seed=seed,
             command="python -m hemaedge.benchmarks.tools.run_adapt_study " + " ".join(
                 [f"--bundle {bundle}", *[f"--split {s}" for s in splits], f"--draws {draws}",
                  f"--cache CACHE --name {name}"]))
    write_result(out / f"run_adapt_{name}", r, to_markdown(r))
    click.echo(to_markdown(r))


if __name__ == "__main__":
    main()
