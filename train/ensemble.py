"""Weighted-average ensembles of fine-tuned classifiers ("HematoFusion", Saadallah et al.).

Members are `.keras` classifiers with a sidecar `<name>.json` (written by `finetune`: classes
and input contract). Their softmax outputs are averaged with weights chosen on the
validation split by grid search, and the result is saved as ONE Keras model (image in,
averaged probabilities out, built-in layers only) so it exports like any other model.

Grids: "paper" = the pairs the paper searched, (0.3, 0.7) and (0.4, 0.6), in both member
orders (our member order is arbitrary); "simplex" = every weight vector on a simplex lattice
with the given step (0.1 -> 11 pairs, 66 triples). Ties on validation accuracy are broken by
lower log loss, then by weights closer to uniform.
"""
from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path

import numpy as np
from hemaedge.edge.errors import HemaedgeError

logger = logging.getLogger(__name__)

PAPER_PAIRS = ((0.3, 0.7), (0.4, 0.6))
GRIDS = ("paper", "simplex")


class EnsembleError(HemaedgeError):
    """Members that cannot be combined (different classes or inputs, missing sidecar)."""


def weight_grid(n_members: int, grid: str = "paper", step: float = 0.1) -> list[tuple[float, ...]]:
    if n_members < 2:
        raise EnsembleError("an ensemble needs at least two members")
    if grid == "paper":
        if n_members != 2:
            raise EnsembleError("the paper grid is defined for two members; use --grid simplex")
        pairs = set()
        for a, b in PAPER_PAIRS:
            pairs.update({(a, b), (b, a)})
        return sorted(pairs)
    if grid != "simplex":
        raise EnsembleError(f"unknown grid {grid!r}; expected one of {GRIDS}")
    k = int(round(1.0 / step))
    if k < 1 or abs(k * step - 1.0) > 1e-9:
        raise EnsembleError(f"simplex step {step} must divide 1 (e.g. 0.1, 0.05, 0.25)")
    out = []
    for combo in itertools.product(range(k + 1), repeat=n_members - 1):
        rest = k - sum(combo)
        if rest >= 0:
            out.append(tuple(round(c / k, 10) for c in (*combo, rest)))
    return out


def combine(probas, weights) -> np.ndarray:
    """Weighted average of member probabilities (weights are normalised to sum 1)."""
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    return np.tensordot(w, np.stack([np.asarray(p, np.float64) for p in probas]), axes=1)


def _log_loss(y, proba) -> float:
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], 1e-12, 1.0))))


def search_weights(probas, y, grid) -> tuple[tuple[float, ...], list[dict]]:
    """Best weights on (probas, y) by accuracy, then log loss, then closeness to uniform."""
    y = np.asarray(y).astype(int)
    rows = []
    for w in grid:
        p = combine(probas, w)
        rows.append({"weights": list(w), "accuracy": float((p.argmax(1) == y).mean()),
                     "log_loss": _log_loss(y, p),
                     "spread": float(np.abs(np.asarray(w) - 1.0 / len(w)).sum())})
    best = min(rows, key=lambda r: (-r["accuracy"], round(r["log_loss"], 12), r["spread"]))
    return tuple(best["weights"]), rows


# ----------------------------------------------------------------------------- members


def read_sidecar(model_path) -> dict:
    model_path = Path(model_path)
    side = model_path.with_suffix(".json")
    if not model_path.is_file():
        raise FileNotFoundError(2, "no such file", str(model_path))
    if not side.is_file():
        raise EnsembleError(f"{model_path}: no sidecar {side.name} (classes + input contract); "
                            "members must come from `hemaedge train finetune` or `ensemble`")
    try:
        data = json.loads(side.read_text())
        data["classes"], data["input"]
    except (ValueError, KeyError, TypeError) as exc:
        raise EnsembleError(f"{side}: not a valid model sidecar ({exc})") from None
    return data


def check_compatible(sidecars: list[dict], paths) -> None:
    first = sidecars[0]
    for side, path in zip(sidecars[1:], list(paths)[1:]):
        if side["classes"] != first["classes"]:
            raise EnsembleError(f"{path}: classes {side['classes']} differ from {paths[0]} {first['classes']}")
        if side["input"] != first["input"]:
            raise EnsembleError(f"{path}: input contract {side['input']} differs from {paths[0]} {first['input']}")


def build_ensemble_model(members, weights):
    """One Keras model: image -> each member -> Rescaling(weight) -> Add = averaged probabilities."""
    import keras

    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    shape = tuple(members[0].inputs[0].shape[1:])
    inp = keras.Input(shape, name="image")
    outs = []
    for i, (m, wi) in enumerate(zip(members, w)):
        # Re-wrap each member under a unique name: two members of one backbone share inner names.
        member = keras.Model(m.inputs[0], m.outputs[0], name=f"member{i}")
        outs.append(keras.layers.Rescaling(float(wi), name=f"weight{i}")(member(inp)))
    out = keras.layers.Add(name="probabilities")(outs)
    return keras.Model(inp, out, name="weighted_ensemble")


def run_ensemble(member_paths, data, out, grid="paper", step=0.1, limit=None, bootstrap=1000,
                 log=None) -> dict:
    """Search weights on val, evaluate members + ensemble on val/test, save ensemble.keras + .json."""
    log = log or logger.info  # messages go through logging (levels, -v/-q, run logs)
    import keras

    from hemaedge.edge.bundle import sha256_file
    from hemaedge.edge.preprocess import InputContract
    from hemaedge.train.evaluate import (apply_temperature, compute_metrics, expected_calibration_error,
                                         fit_temperature, plot_confusion_matrix, write_json, write_text)
    from hemaedge.train.finetune import (confidence_sections, load_split, open_data, predict_proba,
                                         save_keras_atomic)

    paths = [Path(p) for p in member_paths]
    sidecars = [read_sidecar(p) for p in paths]
    check_compatible(sidecars, paths)
    grid_w = weight_grid(len(paths), grid, step)
    classes = list(sidecars[0]["classes"])
    contract = InputContract.from_dict(sidecars[0]["input"])
    ds = open_data(data)
    if list(ds.classes) != classes:
        raise EnsembleError(f"{data}: classes {list(ds.classes)} differ from the members' {classes}")
    models = [keras.models.load_model(p) for p in paths]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    splits = {}
    for split in ("val", "test"):
        if split in ds.splits:
            x, y = load_split(ds, split, contract, limit)
            splits[split] = (y, [predict_proba(m, x) for m in models])
    if "val" not in splits:
        raise EnsembleError(f"{data}: no validation split to choose the weights on")
    best_w, table = search_weights(splits["val"][1], splits["val"][0], grid_w)
    log(f"weights chosen on val ({grid} grid, {len(grid_w)} candidates): {best_w}")

    result = {"members": [{"path": str(p), "sha256": sha256_file(p), "weights": s.get("weights"),
                           "backbone": s.get("backbone")} for p, s in zip(paths, sidecars)],
              "grid": grid, "step": step if grid == "simplex" else None,
              "ensemble_weights": list(best_w), "search": table}
    # The ensemble gets its own temperature, OOD statistics and domain reference (fitted on val, like
    # a single fine-tuned model), so its bundle runs the device's identify rule, not the old fallback.
    y_val = splits["val"][0]
    ens_val = combine(splits["val"][1], best_w)
    temperature = fit_temperature(y_val, ens_val)
    sections = confidence_sections(ds, contract, limit, y_val, apply_temperature(ens_val, temperature), temperature)
    for split, (y, probas) in splits.items():
        result[split] = {f"member{i}": compute_metrics(y, p, classes, bootstrap=bootstrap)
                         for i, p in enumerate(probas)}
        ens = combine(probas, best_w)
        result[split]["ensemble"] = compute_metrics(y, ens, classes, bootstrap=bootstrap)
        result[split]["ensemble"]["temperature"] = temperature
        result[split]["ensemble"]["ece_calibrated"] = expected_calibration_error(y, apply_temperature(ens, temperature))
        for name, m in result[split].items():
            log(f"{split} {name}: accuracy {m['accuracy']:.4f} macro F1 {m['macro_f1']:.4f} kappa {m['kappa']:.4f}")

    model = build_ensemble_model(models, best_w)
    save_keras_atomic(model, out / "ensemble.keras")
    # The saved model must reproduce the probabilities that were evaluated.
    check_p = combine(splits["val"][1], best_w)
    x_val, _ = load_split(ds, "val", contract, limit)
    got = predict_proba(keras.models.load_model(out / "ensemble.keras"), x_val[:64])
    result["saved_model_max_abs_diff"] = float(np.abs(got - check_p[:64]).max())
    if "test" in result:
        plot_confusion_matrix(np.asarray(result["test"]["ensemble"]["confusion_matrix"]), classes,
                              out / "confusion_test.png", title="weighted ensemble, test")
    write_json(out / "metrics.json", result)
    side = {"classes": classes, "input": contract.to_dict(),
            "weights": "weighted ensemble of: " + "; ".join(str(s.get("weights")) for s in sidecars),
            "backbone": "ensemble(" + ", ".join(str(s.get("backbone")) for s in sidecars) + ")",
            "ensemble_weights": list(best_w), "members": result["members"], **sections,
            "metrics": {k: {kk: result[k]["ensemble"][kk] for kk in ("accuracy", "macro_f1", "kappa",
                                                                    "roc_auc_ovr", "accuracy_ci95", "n")}
                        for k in ("val", "test") if k in result}}
    write_json(out / "ensemble.json", side)
    write_text(out / "summary.md", ensemble_markdown(result))
    return result


def ensemble_markdown(r: dict) -> str:
    lines = ["# Weighted ensemble", "", f"* weights {r['ensemble_weights']} chosen on val ({r['grid']} grid)", ""]
    for i, m in enumerate(r["members"]):
        lines.append(f"* member{i}: `{m['path']}` ({m['backbone']}, {m['weights']})")
    lines += ["", "| split | model | accuracy | 95% CI | macro F1 | kappa | ROC AUC |", "|---|---|---|---|---|---|---|"]
    for split in ("val", "test"):
        for name, m in r.get(split, {}).items():
            ci = m.get("accuracy_ci95")
            auc = m.get("roc_auc_ovr")
            lines.append(f"| {split} | {name} | {m['accuracy']:.4f} | "
                         f"{f'{ci[0]:.4f}–{ci[1]:.4f}' if ci else '–'} | {m['macro_f1']:.4f} | "
                         f"{m['kappa']:.4f} | {'–' if auc is None else f'{auc:.4f}'} |")
    return "\n".join(lines) + "\n"
