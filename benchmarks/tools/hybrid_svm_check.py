"""Check the fast SVM grid against plain scikit-learn GridSearchCV on real features, and time both.

    python -m hemaedge.benchmarks.tools.hybrid_svm_check --data ../shared/data/bloodmnist128 --per-class 200

Features: EfficientNet-Lite0 (ImageNet) at 128 px, `rgb`, the first PER_CLASS training images of
every class; plain = GridSearchCV(Pipeline(StandardScaler, SVC)) with the same folds and grid.
Writes benchmarks/results/hybrid_svm_check.json (selections, CV scores, seconds, machine).
"""
from __future__ import annotations

import time

import click


@click.command()
@click.option("--data", required=True)
@click.option("--per-class", type=int, default=200, show_default=True)
@click.option("--jobs", type=int, default=2, show_default=True)
@click.option("--out", default="benchmarks/results/hybrid_svm_check.json", show_default=True)
def main(data, per_class, jobs, out):
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    from hemaedge.edge.preprocess import InputContract
    from hemaedge.train.backbones import build_backbone
    from hemaedge.train.data import open_dataset
    from hemaedge.train.evaluate import write_json
    from hemaedge.train.features import extract_features
    from hemaedge.train.heads import SVM_C, SVM_GAMMA, svm_grid_search
    from hemaedge.train.data.subsets import first_per_class
    from hemaedge.train.hybrid import _machine

    ds = open_dataset(data)
    idx = first_per_class(ds.split("train").labels, per_class)
    x, y = ds.load_images("train", size=128, indices=idx, progress=False)
    model, info = build_backbone("efficientnet-lite0", "imagenet", 128)
    X = extract_features(model, x, InputContract(size=128, preprocess="rgb"), progress=False)

    t = time.perf_counter()
    fast = svm_grid_search(X, y, seed=42, n_jobs=jobs, progress=False)
    fast_s = time.perf_counter() - t
    t = time.perf_counter()
    plain = GridSearchCV(Pipeline([("scale", StandardScaler()), ("svc", SVC())]),
                         {"svc__C": list(SVM_C), "svc__gamma": list(SVM_GAMMA)},
                         cv=StratifiedKFold(5, shuffle=True, random_state=42), scoring="accuracy",
                         n_jobs=jobs).fit(X, y)
    plain_s = time.perf_counter() - t
    same = fast.best_params == {"C": plain.best_params_["svc__C"], "gamma": plain.best_params_["svc__gamma"]}
    agree = float((fast.pipeline.predict(X) == plain.predict(X)).mean())
    from hemaedge.edge.cli_support import command_line

    command = command_line("python -m hemaedge.benchmarks.tools.hybrid_svm_check")
    res = {"command": command, "n": int(len(X)), "features": int(X.shape[1]), "weights": info["weights"], "jobs": jobs,
           "fast_seconds": fast_s, "plain_seconds": plain_s, "same_selection": same,
           "fast_best": fast.best_params, "plain_best": {k.split("__")[1]: v for k, v in plain.best_params_.items()},
           "fast_cv": [r["mean_test_score"] for r in fast.cv_results],
           "plain_cv": [float(v) for v in plain.cv_results_["mean_test_score"]],
           "refit_prediction_agreement": agree, "machine": _machine()}
    write_json(out, res)
    click.echo(f"{len(X)} x {X.shape[1]}: fast {fast_s:.1f} s, plain {plain_s:.1f} s, same selection: {same} "
               f"({fast.best_params}); refit predictions agree on {agree:.4f} of rows -> {out}")


if __name__ == "__main__":  # pragma: no cover
    main()
