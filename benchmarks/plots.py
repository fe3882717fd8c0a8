"""Plots of a benchmark result: the Pareto picture (accuracy vs latency, point area = model size)
and the per-row latency distributions. Needs matplotlib (train extra); on a device without it
the tables are still written and `plots_unavailable()` says why there are no pictures.
"""
from __future__ import annotations

from pathlib import Path

from hemaedge.edge.atomic import atomic_path

BACKEND_COLOURS = {"tflite": "tab:blue", "onnx": "tab:orange", "tensorrt": "tab:green", "keras": "tab:red"}


def plots_unavailable() -> str | None:
    from hemaedge.benchmarks.presets import installed

    if not installed("matplotlib"):
        return "matplotlib is not installed (pip install matplotlib, or the train extra): no plots written"
    return None


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both lower latency and higher accuracy,
    sorted by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return path


def _caption(doc: dict) -> str:
    m = doc["machine"]
    return f"{m.get('cpu_model')}, {m.get('usable_cores')} cores, {str(m.get('date'))[:10]}"


def plot_pareto(doc: dict, path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"] if r.get("accuracy") is not None and (r.get("latency") or {}).get("p50_ms")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 5))
    pts = [(r["latency"]["p50_ms"], 100 * r["accuracy"]) for r in rows]
    sizes = [max(r.get("size_mb") or 0.0, 0.01) for r in rows]
    scale = 900.0 / max(sizes)
    stacked: dict = {}
    for r, (x, y), s in zip(rows, pts, sizes):
        ax.scatter(x, y, s=max(12.0, s * scale), alpha=0.55, color=BACKEND_COLOURS.get(r["backend"], "gray"),
                   edgecolors="black" if r["status"] == "passed" else "red", linewidths=0.8)
        # formats with the same accuracy sit on one line: stack their labels instead of overprinting
        k = stacked.setdefault(round(y, 1), 0) % 5  # at most 5 high, then start again beside
        stacked[round(y, 1)] += 1
        ax.annotate(f"{r['format']} t{r['threads']}", (x, y), fontsize=6.5, xytext=(5 + 12 * (stacked[round(y, 1)] > 5), 4 + 8 * k),
                    textcoords="offset points", arrowprops={"arrowstyle": "-", "lw": 0.3, "color": "gray"} if k else None)
    front = pareto_front(pts)
    ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "k--", lw=0.8, label="Pareto front")
    for backend, colour in BACKEND_COLOURS.items():
        if any(r["backend"] == backend for r in rows):
            ax.scatter([], [], color=colour, alpha=0.55, label=backend)
    ax.set_xscale("log")
    ax.margins(x=0.08, y=0.4)  # room for the stacked labels
    ax.set_xlabel("per-cell latency p50, batch 1 (ms, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy vs latency (point area = model size; red edge = not passed)\n{_caption(doc)}", fontsize=9,
                 pad=12)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def plot_latency(doc: dict, path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in doc["rows"] if r.get("latency_samples_ms")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    data = [r["latency_samples_ms"] for r in rows]
    bp = ax.boxplot(data, orientation="horizontal", whis=(1, 99), showfliers=False, patch_artist=True)
    for patch, r in zip(bp["boxes"], rows):
        patch.set_facecolor(BACKEND_COLOURS.get(r["backend"], "lightgray"))
        patch.set_alpha(0.5)
    ax.set_yticks(range(1, len(rows) + 1), labels=[f"{r['model']} {r['format']} t{r['threads']}" for r in rows],
                  fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("per-cell latency, batch 1 (ms, log scale); box = p25–p75, whiskers = p1–p99")
    ax.set_title(f"Latency distributions\n{_caption(doc)}", fontsize=9)
    ax.grid(True, axis="x", which="both", alpha=0.3)
    out = _save(fig, Path(path))
    plt.close(fig)
    return out


def write_plots(doc: dict, stem) -> dict:
    """<stem>_pareto.png and <stem>_latency.png; {} when matplotlib is missing or nothing to plot."""
    if plots_unavailable():
        return {}
    stem = Path(stem)
    out = {}
    p = plot_pareto(doc, stem.with_name(stem.name + "_pareto.png"))
    if p:
        out["pareto"] = p
    p = plot_latency(doc, stem.with_name(stem.name + "_latency.png"))
    if p:
        out["latency"] = p
    return out
