"""The ensemble table of issue #19, from what `benchmarks/tools/ensemble_check.sh` measured.

    python -m hemaedge.benchmarks.tools.ensemble_table --work ~/hemaedge-runs/ensemble-v1 \\
        --results benchmarks/results/ensemble-v1 --out benchmarks/results/ensemble-v1/ensemble_bloodmnist128

Reads, and measures nothing itself:
  WORK/all-simplex, WORK/pair<i>-{paper,simplex}   `hemaedge train ensemble` folders (metrics.json:
                                                     every member and the ensemble on val and test,
                                                     Keras float32, kappa, ROC AUC, bootstrap CI)
  RESULTS/<bundle>/calibration_<bundle>.json         int8 accuracy on the device runtime
  RESULTS/<bundle>/pbc_end_to_end.json               PBC fields end to end with that int8 bundle
  RESULTS/<bundle>/views_check_<bundle>.json         the same bundle with 4 flipped views averaged (as the default runs)
  RESULTS/ensemble_bench.json                        `hemaedge bench run` rows: size and latency

The goal line compares the all-member ensemble with its best member on BloodMNIST-128 test,
float32 and int8 (goal: +0.3 pt); weights are chosen on val only.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.edge.cli_support import UserError, user_errors

GOAL_GAIN_PT = 0.3


def _read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def ensemble_rows(work: Path) -> list[dict]:
    """One row per member (from the all-member search) and one per ensemble folder."""
    rows = []
    folders = sorted(p for p in work.iterdir() if (p / "metrics.json").is_file() and (p / "ensemble.json").is_file())
    if not any(p.name == "all-simplex" for p in folders):
        raise UserError(f"{work}: no all-simplex/metrics.json; run benchmarks/tools/ensemble_check.sh first")
    # a pair's members named by their index in the all-member search (matched by sha256)
    index = {m["sha256"]: i for i, m in enumerate(json.loads((work / "all-simplex" / "metrics.json").read_text())["members"])}
    for folder in folders:
        m = json.loads((folder / "metrics.json").read_text())
        if folder.name == "all-simplex":
            for i, member in enumerate(m["members"]):
                man = _read(work / "export" / f"member{i}-int8" / "manifest.json") or {}
                rows.append({"row": f"member{i}", "what": f"{member['backbone']} ({member['weights']}), "
                                                         f"`{member['path']}`, bundle name `{man.get('name', '–')}`",
                             "bundle": f"member{i}-int8", "weights": None,
                             **{s: m[s][f"member{i}"] for s in ("val", "test") if s in m}})
        rows.append({"row": folder.name, "what": "ensemble of " + ", ".join(
                         f"member{index.get(member['sha256'], j)}" for j, member in enumerate(m["members"])),
                     "bundle": "ensemble-int8" if folder.name == "all-simplex" else None,
                     "weights": m["ensemble_weights"], "grid": m["grid"],
                     **{s: m[s]["ensemble"] for s in ("val", "test") if s in m}})
    return rows


def device_figures(results: Path, bundle: str) -> dict:
    cal = _read(results / bundle / f"calibration_{bundle}.json") or {}
    pbc = _read(results / bundle / "pbc_end_to_end.json") or {}
    flips = ((_read(results / bundle / f"views_check_{bundle}.json") or {}).get("views") or {}).get("flips") or {}
    after = (pbc.get("counting") or {}).get("after") or {}
    return {"int8_test": (cal.get("test") or {}).get("accuracy"), "int8_val": (cal.get("val") or {}).get("accuracy"),
            "int8_flips_test": (flips.get("test") or {}).get("accuracy"),
            "pbc_end_to_end": pbc.get("end_to_end_accuracy_rbc"),
            "pbc_central_counted": after.get("central_cell_accuracy")}


def bench_figures(results: Path) -> list[dict]:
    doc = _read(results / "ensemble_bench.json") or {"rows": []}
    out = []
    for r in doc["rows"]:
        if r.get("kind") == "baseline":
            continue
        lat = r.get("latency") or {}
        out.append({"model": r["model"], "format": r["format"], "threads": r["threads"], "status": r["status"],
                    "size_mb": r.get("size_mb"), "p50_ms": lat.get("p50_ms"), "accuracy": r.get("accuracy"),
                    "peak_rss_mb": r.get("peak_rss_mb")})
    return out


def goal(rows: list[dict], device: dict) -> dict:
    members = [r for r in rows if r["row"].startswith("member")]
    ens = next(r for r in rows if r["row"] == "all-simplex")
    best_f = max(members, key=lambda r: r["val"]["accuracy"])  # "best member" chosen on val, as a user would
    best_test = max(r["test"]["accuracy"] for r in members)
    out = {"best_member_by_val": best_f["row"], "best_member_test": best_test,
           "ensemble_test": ens["test"]["accuracy"],
           "gain_pt_float": round(100 * (ens["test"]["accuracy"] - best_test), 2)}
    ints = {r["bundle"]: device.get(r["bundle"], {}).get("int8_test") for r in members + [ens]}
    if all(v is not None for v in ints.values()):
        best_int8 = max(v for k, v in ints.items() if k != "ensemble-int8")
        out.update(best_member_int8_test=best_int8, ensemble_int8_test=ints["ensemble-int8"],
                   gain_pt_int8=round(100 * (ints["ensemble-int8"] - best_int8), 2))
    flips = {r["bundle"]: device.get(r["bundle"], {}).get("int8_flips_test") for r in members + [ens]}
    if all(v is not None for v in flips.values()):  # reported beside the goal, which stays one view
        best_flips = max(v for k, v in flips.items() if k != "ensemble-int8")
        out.update(best_member_int8_flips_test=best_flips, ensemble_int8_flips_test=flips["ensemble-int8"],
                   gain_pt_int8_flips=round(100 * (flips["ensemble-int8"] - best_flips), 2))
    out["met"] = out["gain_pt_float"] >= GOAL_GAIN_PT and out.get("gain_pt_int8", -1) >= GOAL_GAIN_PT
    return out


def _f(x, pct=True, nd=2):
    if x is None:
        return "–"
    return f"{100 * x:.{nd}f}" if pct else f"{x:.{nd}f}"


def markdown(doc: dict) -> str:
    g, data = doc["goal"], doc["data_name"]
    lines = [f"# Weighted ensemble of fine-tuned members on {data} (HematoFusion, issue #19)", "",
             f"* command: `{doc['command']}` (after `benchmarks/tools/ensemble_check.sh`)",
             f"* machine: {doc['machine']}", f"* weights chosen on the {data} **val** split only; test reported",
             "* int8 accuracy: the device runtime on every val/test image (bundle_calibration); "
             "int8 bundles are made of the members and the all-member ensemble only",
             "* members:"]
    lines += [f"  * {r['row']}: {r['what']}" for r in doc["rows"] if r["row"].startswith("member")]
    lines += ["", f"## {data} (Keras float32) and the device (int8 bundles)", "",
              "| row | weights (grid) | val acc | test acc | 95 % CI | macro F1 | kappa | ROC AUC | int8 test | int8 test, flips | PBC end to end |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        t, v = r.get("test", {}), r.get("val", {})
        ci = t.get("accuracy_ci95")
        d = doc["device"].get(r["bundle"] or "", {})
        w = "–" if r["weights"] is None else f"{[round(x, 2) for x in r['weights']]} ({r['grid']})"
        lines.append(f"| {r['row']} | {w} | {_f(v.get('accuracy'))} | {_f(t.get('accuracy'))} | "
                     f"{f'{100 * ci[0]:.2f}–{100 * ci[1]:.2f}' if ci else '–'} | {_f(t.get('macro_f1'), False, 4)} | "
                     f"{_f(t.get('kappa'), False, 4)} | {_f(t.get('roc_auc_ovr'), False, 4)} | "
                     f"{_f(d.get('int8_test'))} | {_f(d.get('int8_flips_test'))} | {_f(d.get('pbc_end_to_end'))} |")
    lines += ["", f"**Goal (ensemble >= best member + {GOAL_GAIN_PT} pt on test): "
              f"{'met' if g['met'] else 'not met'}** — float32 {g['gain_pt_float']:+.2f} pt "
              f"({_f(g['ensemble_test'])} vs {_f(g['best_member_test'])})"
              + (f", int8 {g['gain_pt_int8']:+.2f} pt ({_f(g['ensemble_int8_test'])} vs {_f(g['best_member_int8_test'])})"
                 if "gain_pt_int8" in g else ", int8 not measured") + ".", ""]
    if "gain_pt_int8_flips" in g:
        lines += [f"With 4 flipped views averaged (how the packaged default runs on stills): int8 "
                  f"{g['gain_pt_int8_flips']:+.2f} pt ({_f(g['ensemble_int8_flips_test'])} vs "
                  f"{_f(g['best_member_int8_flips_test'])}).", ""]
    if doc["bench"]:
        lines += ["## Size and latency on this machine (`hemaedge bench run`, per cell, batch 1)", "",
                  "| model | format | threads | status | size (MB) | p50 (ms) | peak RSS (MB) |", "|---|---|---|---|---|---|---|"]
        for b in sorted(doc["bench"], key=lambda b: (b["format"], b["threads"], b["model"])):
            lines.append(f"| {b['model']} | {b['format']} | {b['threads']} | {b['status']} | {_f(b['size_mb'], False)} | "
                         f"{_f(b['p50_ms'], False, 3)} | {_f(b['peak_rss_mb'], False, 0)} |")
        lines += ["", "Pareto plot (accuracy vs latency, area = size): `ensemble_bench_pareto.png`; "
                  "full rows: `ensemble_bench.md`.", ""]
    return "\n".join(lines)


@click.command()
@click.option("--work", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--results", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="PREFIX of .json/.md")
@click.option("--data-name", default="BloodMNIST-128", show_default=True, help="The data set's name in the table.")
@user_errors
def main(work: Path, results: Path, out: Path, data_name: str):
    """Members vs ensemble: accuracy, PBC end to end, size and latency (reads, measures nothing)."""
    from hemaedge.benchmarks.machine import describe_machine, one_line

    rows = ensemble_rows(work)
    device = {b: device_figures(results, b) for b in {r["bundle"] for r in rows if r["bundle"]}}
    doc = {"command": f"python -m hemaedge.benchmarks.tools.ensemble_table --work {work} --results {results} --out {out}"
                      + (f" --data-name '{data_name}'" if data_name != "BloodMNIST-128" else ""),
           "machine": one_line(describe_machine()), "data_name": data_name, "rows": rows, "device": device, "bench": bench_figures(results)}
    doc["goal"] = goal(rows, device)
    for path in write_result(out, doc, markdown(doc)):
        click.echo(f"wrote {path}")


if __name__ == "__main__":
    main()
