"""The goals table of the default-model issue (#13), from committed result files only.

    python -m hemaedge.benchmarks.tools.default_model_goals [--candidate benchmarks/results/default-v2-epochN --label NAME]

"before" = the default bundle the issue started from (5 CPU epochs, 2026-11-22), read from the
frozen copy of its tables in benchmarks/history/default-v1/ (the live tables now measure the new
default); "candidate" = the files `benchmarks/tools/default_v2_check.sh` wrote for a new model (an
intermediate checkpoint is labelled with its epoch; `--final` for the model that was packaged).
A figure that was not measured says so.
Writes benchmarks/results/default_model_goals.{md,json}.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import click

from hemaedge.edge.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]  # the repo: this file is benchmarks/tools/
RESULTS = ROOT / "benchmarks" / "results"
BEFORE = ROOT / "benchmarks" / "history" / "default-v1"  # the starting default: its manifest and tables, frozen


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _pct(x, digits=2):
    return "not measured" if x is None else f"{100 * x:.{digits}f}%"


def _bccd(path: Path, variant: str | None = None):
    r = _load(path)
    if not r:
        return None
    v = r["variants"].get(variant) if variant else next(iter(r["variants"].values()))
    return v and {"accuracy": v["accuracy"], "wrong_flagged": v["wrong_flagged"], "right_flagged": v["right_flagged"],
                  "frames": v["frames"], "right": v.get("right"), "split": r["split"]}


def _multi_domain(path: Path | None) -> str:
    """The multi-domain row: the 'all BCCD train cells' step of an adapt_bccd table (issue #14's tool)."""
    r = _load(path) if path else None
    rows = (r or {}).get("rows", [])
    # the step that used every labelled BCCD train cell: "all", or the largest step (a 200-cell
    # step over BCCD's 192 train cells is all of them)
    row = next((x for x in rows if x.get("step") == "all"), None) or max(rows, key=lambda x: x.get("cells", 0),
                                                                          default=None)
    if not row:
        return "not attempted (no multi-domain model trained)"
    e2e = row.get("end_to_end_after")
    head = (f"{_pct(e2e['accuracy'], 1)} end to end ({e2e['right']} of {e2e['frames']} test cells, int8 bundle); "
            if e2e else "")
    model = "int8 features" if row.get("figures") == "bundle" else "Keras"  # --fit head from the bundle alone
    return (f"{head}{_pct(row['bccd_test_after'], 1)} on the device's crops ({model}, n={row['bccd_test_n']}); "
            f"PBC val {_pct(row['pbc_val_before'])} -> {_pct(row['pbc_val_after'])} — `train adapt` of "
            f"{r.get('label') or r.get('base')} on all {row['cells']} labelled BCCD train cells + replay ({path.name})")


def _multi_domain_candidate(cand: dict) -> str:
    """The multi-domain row of a candidate trained with `train finetune --extra-cells`: its own BCCD test run."""
    t = cand.get("bccd_test")
    if not t:
        return "BCCD test not read for this candidate (it is read once, for the candidate chosen on val)"
    return (f"{_pct(t['accuracy'], 1)} end to end ({t['right']} of {t['frames']} test cells, "
            f"int8 bundle after the unidentified rule; bccd_wbc_*_test.md) — this candidate, trained from ImageNet on "
            f"BloodMNIST-128 + the BCCD train cells ({', '.join(Path(p).name for p in cand['extra_cells'])})")


def default_multi_domain() -> Path | None:
    """The packaged default's adaptation table (the `train adapt` defaults, from the bundle itself) when
    there is one, else older ones."""
    for name in ("adapt_bccd_packaged_default.json", "adapt_bccd_default_v2_ep10_defaults.json",
                 "adapt_bccd_default_v2_lite0_defaults.json",
                 "adapt_bccd_default_v2.json",
                 "adapt_bccd_default_v2_epoch4.json"):
        if (RESULTS / name).is_file():
            return RESULTS / name
    return None


def _ood_row(r: dict | None) -> str:
    """BCCD val flag rates of ood_rule's confidence + OOD rule (and the confidence-only rule of the same run)."""
    if not r:
        return "not measured"
    bccd = next((v for k, v in r["sets"].items() if k.startswith("BCCD")), None)
    if not bccd:
        return "not measured"
    both, conf = bccd["rules"]["confidence + OOD"], bccd["rules"]["confidence only"]
    thr, flag = r["ood_rule"]["threshold"], r["ood_rule"].get("flag_threshold")
    levels = (f"two OOD tiers: flagged above {flag:g}, unidentified above {thr:g}" if flag is not None
              else f"OOD score > {thr:g}")
    return (f"{_pct(both['wrong_flagged'], 1)} of wrong, {_pct(both['right_flagged'], 1)} of right (confidence "
            f"rule + {levels}, levels from BloodMNIST val; confidence rule alone in the same run: "
            f"{_pct(conf['wrong_flagged'], 1)} / {_pct(conf['right_flagged'], 1)}; ood_rule_*.md)")


def collect(candidate: Path | None, final: bool = False, multi_domain: Path | None = None) -> dict:
    man = _load(BEFORE / "bundle-manifest.json")
    pbc = _load(BEFORE / "pbc_end_to_end.json")
    cost = _load(RESULTS / "normalize_cost.json")
    now_bccd = _bccd(BEFORE / "bccd_wbc_default_val.json", "no colour normalisation")
    now_cal = _load(BEFORE / "calibration_default.json")
    now_bccd_norm = _bccd(BEFORE / "bccd_wbc_default_val.json", "lab-anchors normalisation to BloodMNIST train")
    cand = {}
    if candidate:
        cm = _load(candidate / "bundle-int8-manifest.json") or {}
        ft = _load(candidate / "finetune_bloodmnist128.json") or {}
        snap = (ft.get("rows") or [{}])[0]
        cal = next((_load(p) for p in sorted(candidate.glob("calibration_*.json"))), None) or {}
        cand = {"test_int8": (cal.get("test") or {}).get("accuracy") or (cm.get("metrics", {}).get("test") or {}).get("accuracy"),
                "pbc": (_load(candidate / "pbc_end_to_end.json") or {}).get("end_to_end_accuracy_rbc"),
                "bccd": next((_bccd(p) for p in sorted(candidate.glob("bccd_wbc_*_val.json"))), None),
                # a multi-domain candidate (`train finetune --extra-cells`): BCCD val is not zero-shot for it
                "extra_cells": (ft.get("config") or {}).get("extra_cells"),
                "bccd_test": next((_bccd(p) for p in sorted(candidate.glob("bccd_wbc_*_test.json"))), None),
                "ece_test": (cal.get("test") or {}).get("ece"), "temperature": cal.get("manifest_temperature"),
                "ece_fp32": snap.get("ece_test"), "ece_fp32_calibrated": snap.get("ece_test_calibrated"),
                "fp32_temperature": snap.get("temperature"), "test_fp32": snap.get("test_accuracy"),
                "epochs": snap.get("epochs"),
                # the packaged default's table (benchmarks/results/ood_rule_default) when the candidate is it
                "ood_rule": next((_load(p) for p in sorted(candidate.glob("ood_rule_*.json"))), None)
                or (_load(RESULTS / "ood_rule_default.json") if final else None)}
        mt = (cm.get("metrics", {}).get("test") or {})
        if not (cal.get("test") or {}).get("accuracy") and mt.get("accuracy") is not None:
            cand["int8_note"] = (f" on a {mt.get('n')}-image parity subset; export status "
                                 f"{(cm.get('validation') or {}).get('status', '?')} (float32 Keras on the full test "
                                 f"split: {_pct(snap.get('test_accuracy'))})")
    rows = [
        {"measure": "BloodMNIST-128 test accuracy, int8 bundle", "goal": ">= 98.5%",
         "now": _pct(man["metrics"]["test"]["accuracy"]),
         "candidate": (_pct(cand.get("test_int8")) + cand.get("int8_note", "")) if cand.get("test_int8") is not None else
                      (f"not measured as int8 yet (float32 Keras: {_pct(cand['test_fp32'])})"
                       if cand.get("test_fp32") is not None else "not measured")},
        {"measure": "PBC fields end to end (pbc_raw_val, red-cell crops)", "goal": ">= 98.5%",
         "now": _pct(pbc.get("end_to_end_accuracy_rbc") if pbc else None), "candidate": _pct(cand.get("pbc"))},
        {"measure": "BCCD white cells right end to end, never trained on BCCD (val split)", "goal": ">= 85%",
         "now": (f"{_pct(now_bccd['accuracy'], 1)} ({now_bccd['frames']} frames; issue: 5.9% on all 341); "
                 f"with device normalisation {_pct(now_bccd_norm['accuracy'], 1)}") if now_bccd else "not measured",
         "candidate": ("not zero-shot: this candidate was trained on BCCD train cells and its epoch chosen on "
                       f"BCCD val ({_pct(cand['bccd']['accuracy'], 1)} there)" if cand.get("bccd") else
                       "not zero-shot: trained on BCCD train cells") if cand.get("extra_cells") else
                      _pct(cand["bccd"]["accuracy"], 1) if cand.get("bccd") else "not measured"},
        {"measure": "the same, multi-domain model, BCCD test split", "goal": ">= 95%",
         "now": "—", "candidate": _multi_domain_candidate(cand) if cand.get("extra_cells") else
                                  _multi_domain(multi_domain)},
        {"measure": "expected calibration error, BloodMNIST test", "goal": "<= 2%",
         "now": (f"{_pct(now_cal['test']['ece'])} (no temperature in the bundle; "
                 f"{_pct(now_cal['test']['ece_with_val_temperature'])} with T = {now_cal['temperature_fitted_on_val']} "
                 "fitted on val)") if now_cal else "not measured",
         "candidate": (f"{_pct(cand.get('ece_test'))} (int8 bundle with its manifest temperature "
                       f"T = {cand.get('temperature')})") if cand.get("ece_test") is not None else
                      (f"{_pct(cand['ece_fp32'])} raw, {_pct(cand['ece_fp32_calibrated'])} with T = "
                       f"{cand['fp32_temperature']:.3f} fitted on val (float32 Keras; int8 bundle not measured yet)")
                      if cand.get("ece_fp32_calibrated") is not None else "not measured"},
        {"measure": "BCCD wrong answers flagged or unidentified (val)", "goal": ">= 90%, with <= 15% of right answers flagged",
         "now": (f"{_pct(now_bccd['wrong_flagged'], 1)} of wrong, {_pct(now_bccd['right_flagged'], 1)} of right "
                 "(confidence < 0.6)") if now_bccd else "not measured",
         "candidate": (f"{_pct(cand['bccd']['wrong_flagged'], 1)} of wrong, {_pct(cand['bccd']['right_flagged'], 1)} "
                       "of right (confidence < 0.6, after temperature)") if cand.get("bccd") else "not measured"},
        {"measure": "the same with the OOD score in the unidentified rule (val)",
         "goal": ">= 90%, with <= 15% of right answers flagged",
         "now": "no OOD statistics in the bundle: confidence-only rule",
         "candidate": _ood_row(cand.get("ood_rule"))},
        {"measure": "cost of normalisation per 640x480 frame", "goal": "<= 1 ms p50",
         "now": "—", "candidate": (f"{cost['ms_per_frame']['normalisation_only_p50']} ms p50 (load average "
                                   f"{cost['load_average'][0]} on 2 cores)") if cost else "not measured"},
    ]
    shipped = shipped_setting()
    if shipped and final and not any(candidate.glob("ood_rule_*.json")):
        # ood_rule_default was regenerated for the shipped setting: it is no longer this column's
        rows[6]["candidate"] = ("one view, one-tier rule: in the git history of ood_rule_default.md "
                                "(regenerated for the shipped setting)")
    for row, key in zip(rows, ("test_int8", "pbc", "bccd", None, "ece_test", "bccd_flags", "ood", None)):
        row["shipped"] = shipped.get(key, "—") if shipped and key else "—"
    return {"date": dt.date.today().isoformat(), "candidate": str(candidate) if candidate else None, "rows": rows,
            "candidate_epochs": cand.get("epochs"), "shipped_views": (shipped or {}).get("views"),
            "extra_cells": cand.get("extra_cells")}


def shipped_setting() -> dict | None:
    """The packaged default as it runs now (its test-time views and two OOD tiers), from the
    tables regenerated with it: views_check, pbc_end_to_end, bccd_wbc_default_val, ood_rule."""
    views = _load(RESULTS / "views_check_default.json")
    pbc = _load(RESULTS / "pbc_end_to_end.json")
    bccd = _load(RESULTS / "bccd_wbc_default_val.json")
    ood = _load(RESULTS / "ood_rule_default.json")
    if not (views and pbc and bccd and ood):
        return None
    name = ood.get("views", "off")
    v = views["views"].get(name) or {}
    b = next(iter(bccd["variants"].values()))
    counting = (pbc.get("counting") or {}).get("after") or {}
    return {"views": name,
            "test_int8": f"{_pct(v['test']['accuracy'])} (views `{name}`; views_check_default.md)" if v else "—",
            "ece_test": f"{_pct(v['test']['ece'])} (views `{name}`)" if v else "—",
            "pbc": (f"{_pct(pbc.get('end_to_end_accuracy_rbc'))}; central cell in `edge run` "
                    f"{_pct(counting.get('central_cell_accuracy'))} counting unidentified as wrong, top class "
                    f"{_pct(counting.get('central_cell_accuracy_top_class'))} (pbc_end_to_end.md)"),
            "bccd": (f"{_pct(b['top_accuracy'], 1)} top class, {_pct(b['accuracy'], 1)} after the unidentified rule "
                     "(bccd_wbc_default_val.md)"),
            "bccd_flags": (f"{_pct(b['wrong_flagged'], 1)} of wrong, {_pct(b['right_flagged'], 1)} of right "
                           "(confidence rule only)"),
            "ood": _ood_row(ood)}


@click.command()
@click.option("--candidate", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Result folder of a candidate (benchmarks/tools/default_v2_check.sh output).")
@click.option("--label", default="candidate", help="Column title for the candidate.")
@click.option("--multi-domain", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="adapt_bccd table (JSON) whose 'all' step is the multi-domain model "
                   "[default: benchmarks/results/adapt_bccd_packaged_default.json, else older ones]")
@click.option("--out", type=click.Path(path_type=Path), default=RESULTS, show_default="benchmarks/results")
@click.option("--final", is_flag=True, help="The candidate is the model that was packaged as the default.")
def main(candidate, label, multi_domain, out, final):
    """Write the issue's goals table from the committed result files."""
    r = collect(candidate, final, multi_domain or default_multi_domain())
    lines = [f"# Default model goals (issue #13), collected {r['date']}", "",
             "Command: `python -m hemaedge.benchmarks.tools.default_model_goals"
             + (f" --candidate {candidate} --label {label}" + (" --final`" if final else "`") if candidate else "`"), "",
             "\"before\" = the default bundle the issue started from (Lite0, 5 CPU epochs, 2026-11-22; its tables are "
             "frozen in benchmarks/history/default-v1/). "
             + (f"\"{label}\" = the NEW PACKAGED DEFAULT (src/hemaedge/models/default): the best validation epoch of "
                f"the new default's training ({r['candidate_epochs']} epochs done). " if candidate and final else
                f"\"{label}\" = a MULTI-DOMAIN candidate, not the packaged default: trained on BloodMNIST-128 and "
                f"another microscope's labelled cells ({', '.join(Path(p).name for p in r['extra_cells'])}), "
                f"{r['candidate_epochs']} epochs, its best epoch chosen on both val sets; BCCD val is not zero-shot "
                "for it. " if candidate and r.get("extra_cells") else
                f"\"{label}\" = an INTERMEDIATE checkpoint of the new default's training "
                f"({r['candidate_epochs']} epochs done), not the final model. " if candidate else
                "No candidate measured yet: the new default's training (docs/finetune.md) had not finished an "
                "epoch when this was collected. ")
             + "Each figure's command, machine and date are in the linked result files."
             + (f" \"shipped\" = the packaged default as `edge run` runs it now: test-time views "
                f"`{r['shipped_views']}` and the two OOD tiers (docs/edge.md), from the regenerated tables." if
                r.get("shipped_views") else ""), "",
             f"| measure | before | {label} | shipped | goal |", "|---|---|---|---|---|"]
    lines += [f"| {x['measure']} | {x['now']} | {x['candidate']} | {x.get('shipped', '—')} | {x['goal']} |"
              for x in r["rows"]]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "default_model_goals.json", json.dumps(r, indent=1))
    atomic_write_text(out / "default_model_goals.md", "\n".join(lines) + "\n")
    click.echo("\n".join(lines))


if __name__ == "__main__":
    main()
