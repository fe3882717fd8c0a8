"""Hybrid frozen-feature training (Shobiry & Puspitasari 2025) end to end.

data -> (paper augmentation of the training split) -> preprocessing (rgb / otsu-mask /
masked-rgb, `hemaedge.edge.preprocess`) -> frozen ImageNet backbone (cached features) ->
heads (SVM grid, KNN, RF, ANN) -> metrics on train/val/test, confusion matrices, safely saved
models, the ANN fused with its backbone as one Keras model, and a Markdown trade-off table.

`run_hybrid(HybridConfig(...))` does the work; `hybrid_cli.py` only parses arguments.
"""
from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from hemaedge.edge.atomic import atomic_path
from hemaedge.edge.machine import describe_machine, one_line
from hemaedge.edge.paths import cache_dir
from hemaedge.edge.preprocess import InputContract, prepare_batch
from hemaedge.train import features as F
from hemaedge.train.data.subsets import first_per_class
from hemaedge.train import heads as H
from hemaedge.train.evaluate import compute_metrics, metrics_markdown, plot_confusion_matrix, write_json, write_text

logger = logging.getLogger(__name__)

RESULTS_VERSION = 1


@dataclass
class HybridConfig:
    data: str
    out: str
    backbone: str = "efficientnet-lite0"
    weights: str | None = "imagenet"
    size: int = 128
    preprocess: str = "otsu-mask"
    augment: str = "paper"
    heads: tuple = H.HEADS
    seed: int = 42
    limit_per_class: int | None = None
    cache_dir: str | None = None
    batch_size: int = 64
    bootstrap: int = 1000
    n_jobs: int = -1
    ann_epochs: int = 50
    progress: bool = True


def default_cache_dir() -> Path:
    return cache_dir("features")


def _machine() -> dict:
    m = describe_machine()
    return {"summary": one_line(m), **m}


def _file_mb(*paths) -> float:
    return sum(Path(p).stat().st_size for p in paths if p and Path(p).is_file()) / 1e6


def run_hybrid(cfg: HybridConfig, log: Callable[[str], None] | None = None) -> dict:
    """Run the whole hybrid benchmark for one (backbone, weights, preprocessing, augmentation)."""
    log = log or logger.info  # messages go through logging (levels, -v/-q, run logs)
    from hemaedge.train.backbones import build_backbone
    from hemaedge.train.data import open_dataset

    heads = tuple(cfg.heads)
    unknown = [h for h in heads if h not in H.HEADS]
    if unknown:
        raise ValueError(f"unknown head(s) {unknown}; expected some of {', '.join(H.HEADS)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    contract = InputContract(size=cfg.size, preprocess=cfg.preprocess, scaling="raw")

    ds = open_dataset(cfg.data)
    classes = list(ds.classes)
    log(f"data: {ds.root} ({ds.kind}, {ds.protocol}); classes: {', '.join(classes)}")

    t0 = time.perf_counter()
    backbone, info = build_backbone(cfg.backbone, cfg.weights, cfg.size)
    build_s = time.perf_counter() - t0
    log(f"backbone: {info['name']} {cfg.size}x{cfg.size}, weights: {info['weights']}")

    code = F.code_fingerprint()
    feats, extraction = {}, {}
    for split in ("train", "val", "test"):
        labels_all = ds.split(split).labels
        idx = first_per_class(labels_all, cfg.limit_per_class)
        augment = cfg.augment if split == "train" else "none"
        key, parts = F.feature_key(
            data=F.data_fingerprint(ds.root, split), split=split, backbone=info["name"],
            weights=info["weights"], size=cfg.size, preprocess=cfg.preprocess, augment=augment,
            seed=cfg.seed, limit_per_class=cfg.limit_per_class, code=code)

        def compute(split=split, idx=idx, augment=augment):
            images, labels = ds.load_images(split, size=cfg.size, indices=idx, progress=cfg.progress)
            return F.split_features(backbone, images, labels, contract, augment=augment, seed=cfg.seed,
                                    batch_size=cfg.batch_size, desc=f"{split} features",
                                    progress=cfg.progress)

        X, y, finfo = F.cached_split_features(cache, key, parts, compute)
        feats[split] = (X, y)
        extraction[split] = dict(finfo, n=int(len(X)), augment=augment)
        how = "cache" if finfo["cached"] else "extracted"
        ips = finfo.get("images_per_s")
        log(f"{split}: {len(X)} x {X.shape[1]} features ({how}; {finfo['seconds']:.1f} s, "
            f"{ips:.1f} img/s when extracted)" if ips else f"{split}: {len(X)} features ({how})")

    n_classes = len(classes)
    backbone_mb = backbone.count_params() * 4 / 1e6
    results = {
        "results_version": RESULTS_VERSION,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "backbone": dict(info, build_seconds=build_s, params=int(backbone.count_params()),
                         fp32_mb=backbone_mb),
        "input": contract.to_dict(),
        "classes": classes,
        "extraction": extraction,
        "heads": {},
        "rows": [],
    }
    write_json(out / "metrics.json", results)

    (Xtr, ytr), (Xva, yva), (Xte, yte) = feats["train"], feats["val"], feats["test"]
    n_check = min(16, len(Xte))  # a few test images to check the fused ANN against its head
    check_idx = first_per_class(ds.split("test").labels, cfg.limit_per_class)[:n_check]
    check = (ds.load_images("test", size=cfg.size, indices=check_idx, progress=False)[0], Xte[:n_check])
    for head in heads:
        log(f"training head: {head}")
        res = _train_and_save(head, cfg, out, Xtr, ytr, Xva, yva, Xte, n_classes, backbone, contract,
                              classes, info, check)
        m = {split: compute_metrics(y, res["proba"][split], classes,
                                    bootstrap=cfg.bootstrap if split == "test" else 0, seed=cfg.seed)
             for split, y in (("train", ytr), ("val", yva), ("test", yte))}
        title = f"{info['name']} + {head.upper()} ({cfg.preprocess}), test acc {m['test']['accuracy']:.4f}"
        cm_png = plot_confusion_matrix(m["test"]["confusion_matrix"], classes, out / f"confusion_{head}.png", title)
        entry = {k: v for k, v in res.items() if k != "proba"}
        entry.update(metrics=m, confusion_png=str(cm_png.name))
        if head == "ann":  # the fused model's sidecar carries the test metrics too
            _finish_fused_sidecar(out, classes, contract, info, m, entry)
        results["heads"][head] = entry
        row = _row(head, cfg, info, m, entry, extraction, backbone_mb)
        results["rows"].append(row)
        write_json(out / "metrics.json", results)
        ci = m["test"]["accuracy_ci95"]
        log(f"  {head}: test accuracy {m['test']['accuracy']:.4f} "
            + (f"(95% CI {ci[0]:.4f}-{ci[1]:.4f}), " if ci else "")
            + f"macro F1 {m['test']['macro_f1']:.4f}, trained in {entry['train_seconds']:.1f} s")
        write_text(out / "summary.md", summary_markdown(results))
    return results


def _train_and_save(head, cfg, out, Xtr, ytr, Xva, yva, Xte, n_classes, backbone, contract,
                    classes, info, check):
    """Train one head; return its probabilities on each split, timing, files and details."""
    d = Xtr.shape[1]
    entry: dict = {"head": head}
    cpu0 = time.process_time()  # CPU seconds of all our threads: comparable on a busy machine
    if head == "svm":
        r = H.svm_grid_search(Xtr, ytr, cv=5, seed=cfg.seed, n_jobs=cfg.n_jobs,
                              scratch_dir=Path(cfg.cache_dir or default_cache_dir()) / "scratch",
                              progress=cfg.progress)
        model = r.pipeline
        entry.update(train_seconds=r.search_seconds + r.refit_seconds, search_seconds=r.search_seconds,
                     refit_seconds=r.refit_seconds, n_fits=r.n_fits, best_params=r.best_params,
                     gamma_value=r.gamma_value, n_support=r.n_support, cv_results=r.cv_results,
                     scores="softmax of one-vs-rest decision values (SVC without Platt scaling), "
                            "ordered so that the top score is SVC.predict's class")

        def proba(X):
            return H.svm_scores(model, X)
    elif head in ("knn", "rf"):
        model = H.make_knn(cfg.n_jobs) if head == "knn" else H.make_rf(cfg.seed, cfg.n_jobs)
        t = time.perf_counter()
        model.fit(Xtr, ytr)
        entry["train_seconds"] = time.perf_counter() - t
        proba = model.predict_proba
    elif head == "ann":
        r = H.train_ann(Xtr, ytr, Xva, yva, n_classes, seed=cfg.seed, epochs=cfg.ann_epochs)
        model = r.model
        entry.update(train_seconds=r.seconds, epochs=r.epochs, history=r.history)

        def proba(X):
            return model.predict(np.asarray(X, np.float32), batch_size=1024, verbose=0)
    else:  # pragma: no cover - checked by the caller
        raise ValueError(head)

    entry["train_cpu_seconds"] = time.process_time() - cpu0
    t = time.perf_counter()
    entry["proba"] = {"train": proba(Xtr), "val": proba(Xva), "test": proba(Xte)}
    entry["predict_seconds"] = time.perf_counter() - t

    if head == "ann":
        files = _save_ann(out, model, backbone)
        # The fused model on real images must give what the head gave on the cached features.
        images, feat_rows = check
        fused_p = H.load_fused(files["keras"]).predict(prepare_batch(images, contract), verbose=0)
        entry["fused_check_max_abs_diff"] = float(np.abs(fused_p - proba(feat_rows)).max())
    else:
        files = H.save_sklearn(model, out / head, d)
    entry["files"] = {k: (Path(v).name if k != "onnx_error" else v) for k, v in files.items()}
    entry["size_mb"] = _file_mb(files.get("skops") or files.get("head_keras"))
    if "onnx" in files:
        entry["onnx_mb"] = _file_mb(files["onnx"])
    if head == "ann":
        entry["fused_mb"] = _file_mb(files["keras"])
    return entry


def _save_ann(out, head_model, backbone) -> dict:
    import keras

    head_path = out / "ann_head.keras"
    # An uncompiled copy sharing the layers: the file holds the weights, not Adam's state.
    with atomic_path(head_path) as tmp:
        keras.Model(head_model.inputs, head_model.outputs, name="ann_head").save(tmp)
    fused = H.fuse_backbone_and_head(backbone, head_model)
    fused_path = out / "fused_ann.keras"
    with atomic_path(fused_path) as tmp:
        fused.save(tmp)
    return {"keras": str(fused_path), "head_keras": str(head_path), "sidecar": str(out / "fused_ann.json")}


def _finish_fused_sidecar(out, classes, contract, info, metrics, entry):
    """fused_ann.json: what the export step needs to know about fused_ann.keras."""
    sidecar = {
        "format": "hemaedge-keras-model", "version": 1,
        "model": "fused_ann.keras",
        "classes": classes,
        "input": contract.to_dict(),
        "weights": info["weights"],
        "backbone": info["name"],
        "head": "ann",
        "metrics": {s: {k: metrics[s][k] for k in ("accuracy", "macro_f1", "kappa", "roc_auc_ovr", "n")}
                    | ({"accuracy_ci95": metrics[s]["accuracy_ci95"]} if s == "test" else {})
                    for s in metrics},
        "fused_check_max_abs_diff": entry.get("fused_check_max_abs_diff"),
    }
    write_json(out / "fused_ann.json", sidecar)


def _row(head, cfg, info, m, entry, extraction, backbone_mb) -> dict:
    tr = extraction["train"]
    total_n = sum(e["n"] for e in extraction.values())
    total_s = sum((e["seconds"] or 0) for e in extraction.values())
    deploy = entry.get("fused_mb") or (entry["size_mb"] + backbone_mb)
    return {
        "backbone": info["name"], "weights": info["weights"], "preprocess": cfg.preprocess,
        "augment": cfg.augment, "size": cfg.size, "head": head,
        "n_train": tr["n"], "train_acc": m["train"]["accuracy"], "val_acc": m["val"]["accuracy"],
        "test_acc": m["test"]["accuracy"], "test_ci95": m["test"]["accuracy_ci95"],
        "macro_precision": m["test"]["macro_precision"], "macro_recall": m["test"]["macro_recall"],
        "macro_f1": m["test"]["macro_f1"], "kappa": m["test"]["kappa"], "auc": m["test"]["roc_auc_ovr"],
        "head_mb": entry["size_mb"], "deploy_mb": deploy, "train_s": entry["train_seconds"],
        "train_cpu_s": entry.get("train_cpu_seconds"),
        "extract_s": total_s, "extract_ips": (total_n / total_s) if total_s else None,
    }


TABLE_COLUMNS = [
    ("backbone", "Backbone"), ("size", "Px"), ("preprocess", "Input"), ("augment", "Augment"), ("n_train", "Train rows"),
    ("head", "Head"), ("train_acc", "Train acc"),
    ("val_acc", "Val acc"), ("test_acc", "Test acc"), ("test_ci95", "Test 95% CI"),
    ("macro_precision", "Macro P"), ("macro_recall", "Macro R"), ("macro_f1", "Macro F1"),
    ("kappa", "Kappa"), ("auc", "AUC (OvR)"), ("head_mb", "Head MB"), ("deploy_mb", "Backbone+head MB"),
    ("train_s", "Train s"), ("train_cpu_s", "Train CPU s"), ("extract_s", "Feature s"), ("extract_ips", "Feature img/s"),
]


def summary_markdown(results: dict) -> str:
    cfg, bb = results["config"], results["backbone"]
    lines = [
        f"# Hybrid frozen features: {bb['name']} + heads ({cfg['preprocess']}, augment {cfg['augment']})",
        "",
        f"- Data: `{cfg['data']}`" + (f" (first {cfg['limit_per_class']} images per class of every split)"
                                     if cfg.get("limit_per_class") else " (all images)"),
        f"- Backbone weights that ran: {bb['weights']}",
        f"- Input: {cfg['size']}x{cfg['size']} RGB 0..255, preprocessing `{cfg['preprocess']}`; "
        f"seed {cfg['seed']}",
        f"- Machine: {results['machine'].get('summary')}; date {results['date']}",
        "",
        "Feature extraction (the Feature s / img/s columns add up all three splits):",
        "",
    ]
    ext_rows = [{"split": s, "n": e["n"], "augment": e["augment"], "seconds": e["seconds"],
                 "ips": e["images_per_s"], "cached": e["cached"]} for s, e in results["extraction"].items()]
    lines.append(metrics_markdown(ext_rows, [("split", "Split"), ("n", "Images"), ("augment", "Augment"),
                                             ("seconds", "Seconds"), ("ips", "Images/s"),
                                             ("cached", "From cache now")]))
    lines += ["Test metrics (macro averages; accuracy CI = bootstrap 95 %, 1000 resamples):", "",
              metrics_markdown(results["rows"], TABLE_COLUMNS)]
    svm = results["heads"].get("svm")
    if svm:
        lines += [f"SVM grid: {svm['n_fits']} fits (45 CV + refit) in {svm['train_seconds']:.1f} s; "
                  f"best C={svm['best_params']['C']}, gamma={svm['best_params']['gamma']} "
                  f"(= {svm['gamma_value']:.6g}); {svm['n_support']} support vectors.", ""]
        lines.append(metrics_markdown(svm["cv_results"], [("C", "C"), ("gamma", "gamma"),
                                                          ("mean_test_score", "CV accuracy"),
                                                          ("std_test_score", "std"),
                                                          ("mean_fit_time", "fit s")]))
    ann = results["heads"].get("ann")
    if ann:
        lines += [f"ANN: {ann['epochs']} epochs; fused backbone+ANN model `fused_ann.keras` "
                  f"({ann['fused_mb']:.2f} MB) with sidecar `fused_ann.json`.", ""]
    return "\n".join(lines) + "\n"


__all__ = ["HybridConfig", "run_hybrid", "summary_markdown", "default_cache_dir", "TABLE_COLUMNS"]
