"""`hemaedge bench ...`: size / latency / accuracy / memory tables and plots.

Parses arguments only; the work is in runner.py (measuring), report.py (tables), plots.py,
compare.py and training_table.py. Runs with the edge extra alone (rows needing TensorFlow are
reported as skipped).
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from hemaedge.edge.cli_support import FINITE_FLOAT, FiniteFloat, UserError, command_line, user_errors


def _ints(ctx, param, value):
    if value is None:
        return None
    try:
        out = tuple(int(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers like 1,2; got {value!r}") from None
    if not out or any(v < 1 for v in out):
        raise click.BadParameter("thread counts must be positive integers")
    return out


def _names(ctx, param, value):
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


@click.group()
def bench():
    """Size / latency / accuracy / memory tables and plots of model bundles."""


@bench.command()
@click.argument("targets", nargs=-1, type=click.Path(path_type=Path))
@click.option("--export-table", "export_tables", multiple=True, type=click.Path(path_type=Path),
              help="Export table JSON (`hemaedge export all --table`): formats that failed to export get rows too.")
@click.option("--keras", "keras", multiple=True, type=click.Path(path_type=Path),
              help="Keras fp32 source model(s) for the baseline rows (matched to bundles by sha256).")
@click.option("--data", type=click.Path(path_type=Path), envvar="HEMAEDGE_BENCH_DATA",
              help="Labelled test images: an ImageFolder tree (ROOT/test/<class>/*.jpg) or a MedMNIST .npz.")
@click.option("--spread", "limit", type=click.IntRange(min=1), metavar="N",
              help="Score accuracy on N test images spread evenly over the split only.")
@click.option("--preset", type=click.Choice(["desktop", "pi", "jetson"]), default="desktop", show_default=True,
              help="Device preset: back ends and thread counts.")
@click.option("--threads", callback=_ints, help="Thread counts to sweep, e.g. 1,2 (default: the preset's).")
@click.option("--formats", callback=_names, help="Only these formats, e.g. tflite-int8,tflite-fp32 (others: skipped).")
@click.option("--keras-predict-only", is_flag=True,
              help="Baseline rows for Keras model.predict only, not also model.predict_on_batch.")
@click.option("--accuracy", "accuracy_mode", type=click.Choice(["measure", "manifest"]), default="measure",
              show_default=True, help="measure: score --data here; manifest: reuse the test accuracy the export's "
              "parity check recorded in each bundle (said in the table), measuring only where there is none.")
@click.option("--frames", type=click.Path(path_type=Path),
              help="Whole-smear frames for per-frame pipeline rows (a folder of images, or the BCCD root).")
@click.option("--frames-limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--training-runs", multiple=True, type=click.Path(path_type=Path),
              help="Folder(s) of training runs whose metrics JSON files make the training trade-off table.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("benchmarks/results"), show_default=True)
@click.option("--name", default="bench", show_default=True, help="File stem of the results: NAME.json/.csv/.md.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True)
@click.option("--min-runs", type=click.IntRange(min=1), default=100, show_default=True,
              help="Timed batch-1 runs at least (and --min-seconds at least) ...")
@click.option("--min-seconds", type=FiniteFloat(min=0), default=1.0, show_default=True)
@click.option("--max-seconds", type=FiniteFloat(min=0.01), default=10.0, show_default=True,
              help="... but stop after this long once 10 runs are in.")
@click.option("--batch", "throughput_batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="Batch size of the throughput measurement.")
@click.option("--max-drop", type=FINITE_FLOAT, default=1.0, show_default=True,
              help="Accuracy points below the reference that mark a row failed-validation.")
@click.option("--row-timeout", type=FiniteFloat(min=1), default=1800, show_default=True)
@click.option("--compare", "compare_with", type=click.Path(path_type=Path), help="Print ratios against an earlier result JSON.")
@click.option("--no-plots", is_flag=True)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@user_errors
def run(targets, export_tables, keras, data, limit, preset, threads, formats, keras_predict_only, accuracy_mode, frames, frames_limit, training_runs,
        out, name, warmup, min_runs, min_seconds, max_seconds, throughput_batch, max_drop, row_timeout,
        compare_with, no_plots, quiet):
    """Benchmark bundles: one row per model x format x back end x thread count.

    TARGETS are bundle folders or folders of bundles (what `hemaedge export all` writes);
    without any, the device's active (or packaged default) bundle. Every row runs in its own
    process; results are rewritten after every row.

    \b
    Example (this repo's published table):
      hemaedge bench run runs/export/default --keras runs/default/best.keras \\
        --data ../shared/data/bloodmnist128 --frames ../shared/data/bccd --name bench_desktop
    """
    from hemaedge.benchmarks import compare as cmp
    from hemaedge.benchmarks.runner import BenchConfig, run_benchmark

    if not targets:
        from hemaedge.edge.defaults import resolve_default_bundle

        targets = (resolve_default_bundle(),)
    if compare_with is not None:
        old = cmp.load_result(compare_with)  # fail before measuring, not after
    cfg = BenchConfig(targets=list(targets), export_tables=list(export_tables), preset=preset, threads=threads, formats=formats, keras=list(keras),
                      keras_calls=("predict",) if keras_predict_only else ("predict", "predict_on_batch"), data=data, limit=limit,
                      timing={"warmup": warmup, "min_runs": min_runs, "min_seconds": min_seconds,
                              "max_seconds": max_seconds},
                      throughput_batch=throughput_batch, max_drop=max_drop, row_timeout=row_timeout,
                      frames=frames, frames_limit=frames_limit, accuracy=accuracy_mode, progress=not quiet)
    try:
        doc, written = run_benchmark(cfg, Path(out) / name, command=command_line(),
                                     training_dirs=training_runs, plots=not no_plots)
    except ValueError as exc:  # test-set and result-file problems carry the path in their message
        raise UserError(str(exc)) from None
    counts = doc["summary"]["status_counts"]
    click.echo("status: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for g in doc["summary"]["goal"]["rows"]:
        click.echo(f"goal {g['row']}: speed-up {g['speedup_p50'] or 0:.2f}x, "
                   f"accuracy delta {g['accuracy_delta_points'] if g['accuracy_delta_points'] is not None else float('nan'):+.2f} pt"
                   f" -> {'met' if g['met'] else 'not met'}")
    for kind, path in written.items():
        click.echo(f"wrote {path}")
    if compare_with is not None:
        click.echo(cmp.format_comparison(cmp.compare(old, doc), str(compare_with), "this run", old, doc))


@bench.command()
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@user_errors
def compare(old, new):
    """Ratios NEW / OLD of every row of two result JSON files (latency, throughput, size, memory)."""
    from hemaedge.benchmarks import compare as cmp

    try:
        a, b = cmp.load_result(old), cmp.load_result(new)
    except cmp.CompareError as exc:
        raise UserError(str(exc)) from None
    click.echo(cmp.format_comparison(cmp.compare(a, b), str(old), str(new), a, b))


@bench.command()
@click.argument("result", type=click.Path(path_type=Path))
@user_errors
def report(result):
    """Re-write the Markdown, CSV and plots of a result JSON (e.g. after editing nothing but the code)."""
    from hemaedge.benchmarks import compare as cmp
    from hemaedge.benchmarks import plots as pl
    from hemaedge.benchmarks import report as rep

    try:
        doc = cmp.load_result(result)
    except cmp.CompareError as exc:
        raise UserError(str(exc)) from None
    stem = Path(result).with_suffix("")
    doc["summary"] = rep.summarize(doc["rows"])  # goal check by this version's rules
    written = {} if pl.plots_unavailable() else pl.write_plots(doc, stem)
    written.update(rep.write_outputs(stem, doc, plots=dict(written)))
    for path in written.values():
        click.echo(f"wrote {path}")


@bench.command()
@click.argument("result", type=click.Path(path_type=Path))
@click.option("--threads", type=click.IntRange(min=1), help="Thread count of the rows shown (default: the largest).")
@click.option("--formats", callback=_names, help="Formats shown, in order (default: Keras baselines, tflite-fp32, tflite-int8).")
@user_errors
def summary(result, threads, formats):
    """A README-sized table from a result JSON: the int8 model next to fp32 (size, accuracy, per-cell
    and per-frame latency), with date, machine and command."""
    from hemaedge.benchmarks import compare as cmp
    from hemaedge.benchmarks import report as rep

    try:
        doc = cmp.load_result(result)
    except cmp.CompareError as exc:
        raise UserError(str(exc)) from None
    kw = {"formats": formats} if formats else {}
    click.echo(rep.headline(doc, threads, **kw))


@bench.command()
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="Write NAME.md / .csv / .json here as well as printing.")
@user_errors
def training(runs, out):
    """The training trade-off table (accuracy, size, training time) from training runs' metrics files."""
    import csv
    import io

    from hemaedge.benchmarks import report as rep
    from hemaedge.benchmarks.training_table import read_training_runs

    rows = read_training_runs(runs)
    if not rows:
        raise UserError(f"no metrics files with a test accuracy under {', '.join(map(str, runs))}")
    md = "\n".join(rep.training_markdown(rows)) + "\n"
    click.echo(md)
    if out:
        out = Path(out)
        rep.atomic_write(out.with_suffix(".md"), "# Training trade-off\n\n" + md)
        rep.atomic_write(out.with_suffix(".json"), json.dumps(rows, indent=1) + "\n")
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        rep.atomic_write(out.with_suffix(".csv"), buf.getvalue())
        click.echo(f"wrote {out.with_suffix('.md')}, .json, .csv")


@bench.command()
@click.argument("result", type=click.Path(path_type=Path))
@user_errors
def validate(result):
    """Check a result JSON against benchmarks/schema.json (exit 1 when it does not conform)."""
    from hemaedge.benchmarks import schema as sch

    from hemaedge.benchmarks import compare as cmp

    path = Path(result)
    try:
        doc = cmp.read_json(path)
    except cmp.CompareError as exc:
        raise UserError(str(exc)) from None
    problems = sch.validate(doc)
    for p in problems:
        click.echo(p)
    click.echo(f"{path}: {'conforms to' if not problems else 'does NOT conform to'} benchmarks/schema.json")
    if problems:
        raise click.exceptions.Exit(1)
