"""Regenerate every table and plot in benchmarks/results/ on this machine, with one command:

    python -m hemaedge.benchmarks.tools.run_all [--list] [--only STEP,..] [--skip STEP,..] [EXPORT_DIR [KERAS_MODEL]]

EXPORT_DIR  the export folder: one bundle per format, as `hemaedge export all MODEL.keras --out
            EXPORT_DIR` writes it (made by the export step when it holds no finished export), or a
            single bundle (bench only); default: $HEMAEDGE_BENCH_EXPORT, else the packaged default
            bundle. Its export table is OUT/export_<basename of EXPORT_DIR>.{md,json}.
KERAS_MODEL the Keras fp32 source of those bundles: what the export step exports and the baseline
            every latency is divided by (default: $HEMAEDGE_BENCH_KERAS; without it the export
            step is skipped and the baseline rows say "skipped").
--list      print each step, its commands and its output files; do nothing.
--only/--skip  run only / all but these steps (names as in --list). Default: every step, cheapest first.

Every step is one row of the STEPS table in `steps()`: Step(name, inputs, command, outputs). A
step whose inputs are missing says "skipped: <reason>" and leaves the committed files alone; a
failing step is reported as FAILED, the other steps still run, and the run exits 1. Summary at
the end. Adding a result is adding one Step line (docs/bench.md says how).

Environment (all optional): HEMAEDGE_SHARED_DATA (../shared/data), HEMAEDGE_BENCH_OUT
(benchmarks/results), HEMAEDGE_BENCH_NAME (bench_desktop), HEMAEDGE_BENCH_EXPORT_TABLE (the
`export all` table JSON; default OUT/export_<EXPORT_DIR name>.json when it exists),
HEMAEDGE_BENCH_ACCURACY (measure | manifest), HEMAEDGE_BENCH_PRESET (desktop), HEMAEDGE_BENCH_LIMIT
(quick check only: N test images spread evenly (bench --spread), the first N BCCD frames of
each split (--first), N PBC fields spread evenly (--spread)), HEMAEDGE_BENCH_TRAINING_RUNS (folders
of training runs, space-separated; default runs/ when it exists), HEMAEDGE_PBC_BUNDLE (default the
packaged default bundle), HEMAEDGE_HYBRID_RUNS (runs/hybrid), HEMAEDGE_HYBRID_TRAIN (1: train the
missing hybrid runs first - hours), HEMAEDGE_FINETUNE_RUN (runs/finetune-lite0),
HEMAEDGE_EXPORT_FORMATS, HEMAEDGE_EXPORT_FORCE (1: export again), HEMAEDGE_RBC_BUNDLE (src/hemaedge/models/rbc),
HEMAEDGE_RBC_RUNS (the red-cell fine-tuning runs of the morphology table; default runs/rbc/*),
HEMAEDGE_RBC_BASELINE (earlier red-cell bundle(s) measured beside it in rbc_domain), HEMAEDGE_RBC_SOURCE_RUN
(the backbone run of the rbchead table, default runs/rbc/ft-lite0-64-none: the second pass's; the packaged
model is that run resumed to 8 epochs, runs/rbc/ft64-resume), HEMAEDGE_RBC_CROPS_ARGS (how
rbcmodel cuts the labelled crops: the bundle's training geometry, default "--diameter 42.8"), HEMAEDGE_STEP_TIMEOUT (seconds
any one command may run, default 10800; 0 = no limit), HEMAEDGE_PREVIOUS_SRC (counting_speed: a checkout of an
earlier version of this code, one more single-thread row with tracking). Commands run under `nice -n 10`.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = "src/hemaedge/models/default"
# members of the first real ensemble (issue #19): the packaged default's Keras source, then Lite1's snapshot
DEFAULT_KERAS_RUN = "~/hemaedge-runs/default-v2-lite0-ep10"  # the packaged default's Keras source (epoch 10)
ENSEMBLE_LITE0_LITE1 = ("~/hemaedge-runs/default-v2-lite0-ep10/model.keras", "~/hemaedge-runs/member-lite1-ep6/model.keras")
# the red-cell ensemble (issue #19 item 3): the packaged red-cell bundle's Keras source (8 epochs), a run trained
# separately with the weighted loss (1 epoch), and the source's own run at epoch 4 (before it was resumed)
ENSEMBLE_RBC = ("~/hemaedge-runs/redcells3/ft64-resume/model.keras", "~/hemaedge-runs/redcells/ft-lite0-64-loss/model.keras",
                "~/hemaedge-runs/redcells/ft-lite0-64-none/model.keras")
ENSEMBLE_RBC_CROPS = "~/hemaedge-runs/redcells2/crops64-old"   # the members' training crops (64 px, 1.5 x 42.8 px)
ENSEMBLE_RBC_CALIB = "~/hemaedge-runs/redcells/calib64"        # 480 of their train crops (`hemaedge data calibration`)
# the three-member ensemble (issue #19): the same two, then Lite2 at its best val epoch (4 of 8)
ENSEMBLE_V1 = (*ENSEMBLE_LITE0_LITE1, "~/hemaedge-runs/member-lite2/model.keras")


class UsageError(Exception):
    """A wrong command line: message on stderr, exit 2."""


class Skip(Exception):
    """A step whose inputs are not here: it leaves the committed files alone."""


@dataclass
class Need:
    """An input a step needs: a path or glob that must match, and the reason given when it does not."""

    pattern: str
    missing: str

    def check(self) -> None:
        if not glob.glob(self.pattern):
            raise Skip(self.missing)


@dataclass
class Step:
    """One result of the repository: what it needs, the command that makes it, what it writes.

    `run`, for the few steps that are more than one command, replaces running `command` once;
    it may raise Skip and return notes for the summary."""

    name: str
    inputs: list[Need]
    command: list[str]
    outputs: list[str]
    about: str = ""
    cost: str = ""
    run: Callable[["Settings", "Step"], list[str]] | None = None


@dataclass
class Settings:
    """The choices of one run: command-line arguments and HEMAEDGE_* variables, with defaults."""

    export: str = ""
    keras: str = ""
    env: dict = field(default_factory=lambda: dict(os.environ))

    def get(self, name: str, default: str = "") -> str:
        return self.env.get(name) or default

    @property
    def he(self) -> str:
        return self.get("HEMAEDGE", ".venv/bin/hemaedge" if Path(".venv/bin/hemaedge").exists() else "hemaedge")

    @property
    def py(self) -> str:
        return self.get("PYTHON", ".venv/bin/python" if Path(".venv/bin/python").exists() else sys.executable)

    @property
    def data(self) -> str:
        return self.get("HEMAEDGE_SHARED_DATA", "../shared/data")

    @property
    def out(self) -> str:
        return self.get("HEMAEDGE_BENCH_OUT", "benchmarks/results").rstrip("/")

    @property
    def limit(self) -> str:
        return self.get("HEMAEDGE_BENCH_LIMIT")

    @property
    def export_table(self) -> str:
        """OUT/export_<EXPORT_DIR name>: `export all` names its table after the export folder; a single bundle has none."""
        if self.export and not Path(self.export, "manifest.json").is_file():
            return f"{self.out}/export_{Path(self.export).name}"
        return ""

    @property
    def timeout(self) -> int:
        return int(self.get("HEMAEDGE_STEP_TIMEOUT", "10800"))



# chosen on the validation checks only (int8 bundle, the mean of BloodMNIST val and BCCD val end to end, the score the
# training chose its epochs by: md1 (97.43 + 90.6) / 2 = 94.0 %, md2 (97.37 + 91.8) / 2 = 94.6 %; PBC fields 96.90 vs
# 97.02 %), before BCCD test was read; only it gets a BCCD test step
CHOSEN_MULTI_DOMAIN = "md2"


def multi_domain_steps(py: str, data: str, out: str) -> list[Step]:
    """The multi-domain candidates of issue #13 (benchmarks/tools/multidomain_train.sh: BloodMNIST-128 + BCCD's
    labelled train cells, epoch chosen on BloodMNIST val + BCCD val), each checked like the default; BCCD test is
    a separate step, run once for the candidate chosen on the validation checks."""
    steps = []
    for stage, what in (("md1", "10 epochs from ImageNet"), ("md2", "md1 + 4 epochs at lr 5e-5")):
        name, run = f"multidomain-{stage}", os.path.expanduser(f"~/hemaedge-runs/multidomain/{stage}")
        snap, res, tag = os.path.expanduser(f"~/hemaedge-runs/{name}"), f"{out}/{name}", name.replace("-", "_")
        steps.append(Step(
            name, [Need(f"{run}/state.json", f"no multi-domain training run {run}; kept {res}")],
            ["env", f"HEMAEDGE_GOALS_OUT={res}", f"HEMAEDGE_CHECK_SNAPSHOT={snap}",
             "benchmarks/tools/default_v2_check.sh", run, name],
            [f"{res}/{f}" for f in (
                "finetune_bloodmnist128.md", "finetune_bloodmnist128.json", "finetune_bloodmnist128_curves.png",
                "finetune_bloodmnist128_confusion.png", "bundle-int8-manifest.json", f"calibration_{tag}.md",
                f"calibration_{tag}.json", "pbc_end_to_end.md", "pbc_end_to_end.json", f"bccd_wbc_{tag}_val.md",
                f"bccd_wbc_{tag}_val.json", f"ood_rule_{tag}.md", f"ood_rule_{tag}.json", "default_model_goals.md",
                "default_model_goals.json")],
            f"the multi-domain candidate {stage} ({what}; BloodMNIST-128 + 192 BCCD train cells) measured like the "
            "default: int8 export, calibration, PBC fields, BCCD val, OOD rule, goals", "~15 min"))
        if stage != CHOSEN_MULTI_DOMAIN:
            continue
        steps.append(Step(
            f"{name}-test", [Need(f"{snap}/bundle-int8/manifest.json",
                                  f"no int8 bundle of the multi-domain candidate {stage} (run step {name})")],
            ["bash", "-c", f"{py} -m hemaedge.benchmarks.tools.bccd_wbc --data {data}/bccd --bloodmnist128 "
             f"{data}/bloodmnist128 --bundle {snap}/bundle-int8 --split test --normalize bundle --name {tag}_test "
             f"--out {res} && {py} -m hemaedge.benchmarks.tools.default_model_goals --candidate {res} --label {name} "
             f"--out {res}"],
            [f"{res}/{f}" for f in (f"bccd_wbc_{tag}_test.md", f"bccd_wbc_{tag}_test.json", "default_model_goals.md")],
            f"BCCD test white cells end to end with the multi-domain candidate {stage}: reported once, for the candidate "
            "chosen on the validation checks, never for choosing; then its goals table with that row", "~2 min"))
    return steps

def _default_label() -> str:
    """Edge-run label of the packaged default bundle, by its format (tflite-int8-mixed -> default_int8_mixed)."""
    try:
        fmt = json.loads(Path(DEFAULT_BUNDLE, "manifest.json").read_text())["model"]["format"]
    except (OSError, ValueError, KeyError):
        fmt = "unknown"
    return "default_" + fmt.removeprefix("tflite-").replace("-", "_")


FP32_LABEL = "lite0_fp32"  # the tflite-fp32 bundle of EXPORT_DIR (the project's Lite0 model)


def _ensemble_step(out: str, name: str, members: tuple[str, ...], label: str, cost: str) -> Step:
    """`ensemble_check.sh NAME MEMBER...` (issue #19): every sub-step is skipped when its output exists
    (delete benchmarks/results/NAME and ~/hemaedge-runs/NAME to redo)."""
    tags = [f"member{i}-int8" for i in range(len(members))] + ["ensemble-int8"]
    return Step(name,
                [Need(os.path.expanduser(p), f"no member {p}; kept {out}/{name}/") for p in members],
                ["env", "HEMAEDGE_ENSEMBLE_NICE=0", "benchmarks/tools/ensemble_check.sh", name,
                 *(os.path.expanduser(p) for p in members)],
                [f"{out}/{name}/{f}" for f in
                 ("ensemble_bloodmnist128.md", "ensemble_bloodmnist128.json", "ensemble_bench.md", "ensemble_bench.csv",
                  "ensemble_bench.json", "ensemble_bench_latency.png", "ensemble_bench_pareto.png")]
                + [f"{out}/{name}/{t}/{f}" for t in tags
                   for f in (f"calibration_{t}.md", f"calibration_{t}.json", "pbc_end_to_end.md", "pbc_end_to_end.json",
                             f"views_check_{t}.md", f"views_check_{t}.json")],
                f"{label}: weights on val, int8/fp16 bundles, int8 accuracy, PBC end to end, test-time views, "
                "size/latency, kappa/AUC/CI table",
                f"{cost}; hours of training before it")


def steps(s: Settings) -> list[Step]:
    """The STEPS table, cheapest first. One line per result; `--list` prints it."""
    data, out, py, he, limit = s.data, s.out, s.py, s.he, s.limit
    first = ["--first", limit] if limit else []  # BCCD frames: the first N of each split
    spread = ["--spread", limit] if limit else []  # PBC fields: N spread evenly
    # the three evaluation sets of the flag/OOD tools (benchmarks/tools/data_options.evaluation_sets)
    eval_sets = ["--bccd", f"{data}/bccd", "--pbc", f"{data}/pbc_raw_val", "--bloodmnist128", f"{data}/bloodmnist128"]
    finetune_run = s.get("HEMAEDGE_FINETUNE_RUN", "runs/finetune-lite0")
    hybrid_runs = s.get("HEMAEDGE_HYBRID_RUNS", "runs/hybrid")
    hybrid_train = s.get("HEMAEDGE_HYBRID_TRAIN", "0") == "1"
    pbc_bundle = s.get("HEMAEDGE_PBC_BUNDLE", DEFAULT_BUNDLE)
    frames = limit or "200"
    baseline = s.get("HEMAEDGE_BASELINE_SRC", "HEMAEDGE_BASELINE_SRC")
    peer_python = s.get("HEMAEDGE_PEER_PYTHON", "HEMAEDGE_PEER_PYTHON")
    proxy_base = s.get("HEMAEDGE_ADAPT_PROXY_BASE", os.path.expanduser("~/hemaedge-runs/review/proxy-base-smallcnn64-lr5e-4"))
    proxy_work = s.get("HEMAEDGE_ADAPT_WORK", os.path.expanduser("~/hemaedge-runs/review/adapt-bccd-proxy"))
    # The adaptation measurements (issue #14) start from the packaged default bundle itself (DEFAULT_BUNDLE):
    # `train adapt --fit head` needs no Keras source since 2026-12-02 18:00. The tables made from the lost Keras
    # source (~/hemaedge-runs/default-v2-lite0-ep10/model.keras) are in benchmarks/history/adapt-keras-source/.
    adapt_base = s.get("HEMAEDGE_ADAPT_BASE", DEFAULT_BUNDLE)
    adapt_work_default = s.get("HEMAEDGE_ADAPT_DEFAULT_WORK", os.path.expanduser("~/hemaedge-runs/adapt"))

    def tool(module: str) -> list[str]:  # a script of benchmarks/tools/
        return [py, "-m", f"hemaedge.benchmarks.tools.{module}"]

    return [
        Step("finetune", [Need(f"{finetune_run}/metrics.json", f"no run at {finetune_run} (no metrics.json); "
                                                               f"kept {out}/finetune_bloodmnist128.*")],
             [*tool("finetune_table"), finetune_run, "--out", f"{out}/finetune_bloodmnist128"],
             [f"{out}/finetune_bloodmnist128{x}" for x in (".md", ".json", "_curves.png", "_confusion.png")],
             f"fine-tuning table, collected from the finished run {finetune_run} (never retrains)", "seconds"),
        Step("hybrid", [] if hybrid_train else [Need(f"{hybrid_runs}/*/metrics.json",
                                                     f"no finished hybrid run under {hybrid_runs}; kept {out}/hybrid_bloodmnist128.*")],
             [*tool("hybrid_table"), "--data", f"{data}/bloodmnist128", "--backbones",
              "efficientnet-lite0,efficientnet-lite1,efficientnet-lite2,efficientnetv2b0,resnet50",
              "--preprocess", "rgb,masked-rgb,otsu-mask", "--augment", "paper,none", "--size", "128,224",
              "--runs", hybrid_runs, "--out", f"{out}/hybrid_bloodmnist128", *([] if hybrid_train else ["--collect-only"])],
             [f"{out}/hybrid_bloodmnist128{x}" for x in (".md", ".json", ".png")],
             f"hybrid paper table, collected from the finished runs under {hybrid_runs} (lists the missing ones)",
             "seconds (HEMAEDGE_HYBRID_TRAIN=1: hours per missing run)"),
        Step("export", [], [he, "export", "all", s.keras or "KERAS_MODEL", "--data", f"{data}/bloodmnist128",
                            "--out", s.export or "EXPORT_DIR", "--table", s.export_table or f"{out}/export_NAME", "--force",
                            *(["--formats", s.get("HEMAEDGE_EXPORT_FORMATS")] if s.get("HEMAEDGE_EXPORT_FORMATS") else [])],
             [f"{s.export_table}.md", f"{s.export_table}.json"] if s.export_table else [],
             "export table of KERAS_MODEL, made by `export all` into EXPORT_DIR unless it holds a finished export",
             "0 when reused; ~20-30 min for every format with parity on val+test", run=_run_export),
        Step("bench", [], _bench_command(s),
             [f"{out}/{_bench_name(s)}{x}" for x in (".md", ".csv", ".json", "_pareto.png", "_latency.png")],
             "per-model / per-format / per-frame tables (+ training trade-off table)",
             "~5 min with HEMAEDGE_BENCH_ACCURACY=manifest; ~20 min scoring every format on the test split"),
        # first of the default's steps: the packaged default's OOD levels and test-time views, set on BloodMNIST val with its own int8
        # outputs; rewrites the bundle's manifest (ood, inference.views, domain.ood), not its model file
        Step("ood-calibrate", [], tool("ood_calibrate") + ["--bundle", DEFAULT_BUNDLE, "--bloodmnist128",
                                                           f"{data}/bloodmnist128", "--views", "flips", "--write",
                                                           "--name", "default", "--out", out],
             [f"{out}/ood_calibrate_default{x}" for x in (".md", ".json")],
             "the default's two OOD levels (review 95%, unidentified 99.5% of right BloodMNIST val cells) for "
             "its test-time views, written to its manifest", "~1 min"),
        Step("segmentation", [], [*tool("segmentation_bccd"), "--data", f"{data}/bccd", "--method", "stain",
                                  "--method", "otsu", "--split", "train", "--split", "val", "--split", "test", "--split", "all",
                                  "--bundle", DEFAULT_BUNDLE, "--out", out, *first],
             [f"{out}/segmentation_bccd.md", f"{out}/segmentation_bccd.json"],
             "white-cell and platelet recall/precision of the segmenter on BCCD frames, and of what the whole "
             "pipeline counts with the packaged default", "~2-3 min"),
        Step("pbc", [], [*tool("pbc_end_to_end"), "--data", f"{data}/pbc_raw_val",
                         "--bloodmnist-val", f"{data}/bloodmnist128/val", "--bundle", pbc_bundle, "--out", out, *spread],
             [f"{out}/pbc_end_to_end.md", f"{out}/pbc_end_to_end.json"],
             f"end to end (segment -> crop -> classify) on PBC fields, with bundle {pbc_bundle}", "~5 min"),
        Step("edge", [], [he, "edge", "run", "-q", "--bundle", "BUNDLE", "--source", f"{data}/bccd/JPEGImages",
                          "--max-frames", frames, "--threads", "2", "--out", "TMP/LABEL_runN"],
             [f"{out}/edge_run_bccd/{label}_run{i}.summary.json" for label in (_default_label(), FP32_LABEL)
              for i in (1, 2, 3)],
             f"whole `edge run` on {frames} BCCD frames, 3 runs per bundle: {DEFAULT_BUNDLE} ({_default_label()}), "
             f"EXPORT_DIR/tflite-fp32 ({FP32_LABEL}, when it exists)", "~2 min", run=_run_edge),
        Step("svm", [], [*tool("hybrid_svm_check"), "--data", f"{data}/bloodmnist128", "--per-class", "200",
                         "--out", f"{out}/hybrid_svm_check.json"],
             [f"{out}/hybrid_svm_check.json"],
             "fast SVM grid vs plain scikit-learn GridSearchCV on 1,600 real Lite0 features, timed", "~3 min"),
        Step("soak", [], [*tool("soak"), "--frames", s.get("HEMAEDGE_SOAK_FRAMES", "20000"),
                          "--run-dir", f"{os.environ.get('TMPDIR', '/tmp')}/hemaedge-soak", "--out", f"{out}/soak_default"],
             [f"{out}/soak_default{x}" for x in (".md", ".json", ".png")],
             "20,000-frame `edge run --loop` with the default bundle: memory flat, no latency drift", "~10 min"),
        # issues #12, #13: the device pipeline on inputs of microscopes and cameras not in the data (docs/edge.md)
        Step("input-robustness", [], tool("input_robustness") + ["--data", f"{data}/bccd", "--pbc", f"{data}/pbc_raw_val",
                                                                 "--bundle", DEFAULT_BUNDLE, "--threads", "2", "--out", out],
             [f"{out}/input_robustness{x}" for x in (".md", ".json")],
             "`edge run` on 24 BCCD val frames + 16 PBC fields made into other labs' inputs (rescaled, camera frames, "
             "formats, bit depths, BGR, white balance, exposure, rotation, EXIF, video, broken files)", "~2 min"),
        Step("platelet_sheet", [], [*tool("platelet_sheet"), "--data", f"{data}/bccd", "--bundle", DEFAULT_BUNDLE,
                                    "--out", out],
             [f"{out}/platelet_false_alarms{x}" for x in (".md", ".json", ".jpg")],
             "contact sheet and count by kind of the false alarms of the platelets the whole pipeline counts "
             "(packaged default) on BCCD train + val", "~1 min"),
        Step("platelet_rules", [], [*tool("platelet_rules"), "--data", f"{data}/bccd", "--bundle", DEFAULT_BUNDLE,
                                    "--out", out],
             [f"{out}/platelet_rules{x}" for x in (".md", ".json")],
             "ablation of the platelet rules: whole-pipeline platelet recall/precision on BCCD train + val and test "
             "with each rule off in turn (packaged default)", "~1 min"),
        Step("identify-levels", [], [*tool("identify_levels"), "--bundle", DEFAULT_BUNDLE, "--bccd", f"{data}/bccd",
                                     "--pbc", f"{data}/pbc_raw_val", "--out", out, *first],
             [f"{out}/identify_levels{x}" for x in (".md", ".json")],
             "the platelet confirmation and clump levels of edge.identify replayed on the packaged default's own "
             "outputs: BCCD platelets and white cells (train + val choose, test reported), PBC platelet fields",
             "~3 min"),
        Step("live", [], [*tool("live_feed"), "--data", f"{data}/bccd", "--videos", "8", "--out", out],
             [f"{out}/live_feed.md", f"{out}/live_feed.json"],
             "live-feed counting: distinct white cells counted on 8 generated pans over BCCD mosaics vs the VOC truth",
             "~5 min"),
        Step("counting_speed", [Need(f"{baseline}/edge/pipeline.py", "no HEMAEDGE_BASELINE_SRC checkout to compare "
                                                                     f"with; kept {out}/counting_speed.*")],
             [*tool("counting_speed"), "--baseline-src", baseline, "--source", f"{data}/bccd/JPEGImages",
              "--frames", frames, "--repeats", "3", "--stage-rounds", "7", "--out", out]
             + (["--previous-src", s.get("HEMAEDGE_PREVIOUS_SRC")] if s.get("HEMAEDGE_PREVIOUS_SRC") else []),
             [f"{out}/counting_speed.md", f"{out}/counting_speed.json"],
             "whole `edge run` latency and peak RSS before the counting stages (HEMAEDGE_BASELINE_SRC: a checkout, "
             "e.g. `git worktree add --detach DIR <commit>`), with them, and with tracking (and, with "
             "HEMAEDGE_PREVIOUS_SRC, an earlier checkout of this code with tracking, single-thread)", "~4 min"),
        Step("peer_speed", [Need(peer_python, "no HEMAEDGE_PEER_PYTHON (python of a separate virtualenv with the "
                                              f"`peer` extra); kept {out}/peer_speed.*")],
             [*tool("peer_speed"), "--peer-python", peer_python, "--source", f"{data}/bccd/JPEGImages",
              "--frames", limit or "50", "--repeats", "3", "--out", out],
             [f"{out}/peer_speed.md", f"{out}/peer_speed.json"],
             "per-cell classification and segmentation stage beside YOLO11n-cls (128 px) and YOLO11n (640 px), "
             "ONNX fp32 with random weights, same frames and crops, 2 threads", "~3 min"),
        Step("speed_profile", [], [*tool("speed_profile"), "--source", f"{data}/bccd/JPEGImages",
                                   "--frames", limit or "60", "--out", out]
             + (["--baseline-src", s.get("HEMAEDGE_PROFILE_BASELINE_SRC")] if s.get("HEMAEDGE_PROFILE_BASELINE_SRC") else []),
             [f"{out}/speed_profile.md", f"{out}/speed_profile.json"],
             "where the device's time goes: CPU of each per-cell preprocessing call (beside the checkout "
             "HEMAEDGE_PROFILE_BASELINE_SRC when set) and a cProfile of the counting pipeline", "~2 min"),
        *_red_cell_steps(s, tool),
        Step("fleet", [], [*tool("fleet_rollout"), "--out", f"{out}/fleet_rollout.md"],
             [f"{out}/fleet_rollout.md"],
             "`hemaedge deploy --inventory` to three loopback sshd devices, forks 1 vs 3 (needs sshd, ansible-core)",
             "~15 min"),
        Step("review", [Need("/usr/bin/chromium", f"no /usr/bin/chromium; kept {out}/review_page_load.md")],
             [py, "-m", "hemaedge.review.bench", "--cells", "500", "--out", f"{out}/review_page_load.md"],
             [f"{out}/review_page_load.md"],
             "review page with 500+ cells of a real run in headless Chromium: load time, keys per correction",
             "~1 min"),
        Step("adapt-proxy", [Need(f"{proxy_base}/model.keras",
                                  f"no proxy base at {proxy_base} (make it with the command in "
                                  f"{out}/adapt_bccd_proxy_smallcnn64.md's notes, docs/review.md); kept its table")],
             [py, "-m", "hemaedge.train.adapt_bccd", "--base", f"{proxy_base}/model.keras", "--bccd", f"{data}/bccd",
              "--replay", f"{data}/bloodmnist128", "--work", proxy_work, "--out", f"{out}/adapt_bccd_proxy_smallcnn64",
              "--steps", "100,25,50,200", "--epochs", "8", "--export-steps", "100", "--fit", "tail"],
             [f"{out}/adapt_bccd_proxy_smallcnn64{x}" for x in (".md", ".json")],
             "train adapt on 25/50/100/all BCCD train cells (reviewer simulated) from a small PBC base; "
             "BCCD test and PBC val before/after", "~5 min"),
        Step("adapt-recipes", [Need(f"{adapt_base}/manifest.json", f"no base bundle at {adapt_base}; kept {out}/adapt_recipes.*")],
             [py, "-m", "hemaedge.benchmarks.tools.adapt_recipes", "--base", adapt_base, "--bccd", f"{data}/bccd",
              "--replay", f"{data}/bloodmnist128", "--work", f"{adapt_work_default}/recipes-packaged", "--out", f"{out}/adapt_recipes", "--cells", "100",
              "--splits", "0,1,2",
              *[a for r in ADAPT_RECIPES for a in ("--recipe", r)]],
             [f"{out}/adapt_recipes{x}" for x in (".md", ".json")],
             "adaptation recipes compared on BCCD train cells only (100 to adapt on, the rest to compare), PBC val change",
             "~5 min per recipe"),
        Step("adapt-errors", [Need(f"{adapt_work_default}/recipes-packaged/recipe-head*/bundle/manifest.json",
                                   f"no adapt-recipes adaptations in {adapt_work_default}/recipes-packaged; kept {out}/adapt_errors.*")],
             [py, "-m", "hemaedge.benchmarks.tools.adapt_errors", "--work", f"{adapt_work_default}/recipes-packaged",
              "--base", adapt_base, "--bccd", f"{data}/bccd", "--recipe", "head", "--splits", "0,1,2",
              "--out", f"{out}/adapt_errors"],
             [f"{out}/adapt_errors{x}" for x in (".md", ".json", ".jpg")],
             "what the adapted default (recipe head of adapt-recipes) still gets wrong on BCCD train development cells: "
             "confusion, crop against the annotated box, labels to check, contact sheet (run after adapt-recipes)",
             "~2 min"),
        Step("adapt-bccd-defaults", [Need(f"{DEFAULT_BUNDLE}/manifest.json", f"no packaged default at {DEFAULT_BUNDLE}")],
             [py, "-m", "hemaedge.train.adapt_bccd", "--base", DEFAULT_BUNDLE, "--label",
              ADAPT_BASE_LABEL + ", train adapt defaults", "--bccd", f"{data}/bccd",
              "--replay", f"{data}/bloodmnist128", "--work", f"{adapt_work_default}/steps-packaged",
              "--out", f"{out}/adapt_bccd_packaged_default", "--steps", "100,200,25,50",
              "--export-steps", "25,50,100,200", *ADAPT_RECIPE],
             [f"{out}/adapt_bccd_packaged_default{x}" for x in (".md", ".json")],
             "`train adapt`'s default recipe (--fit head: classifier layer on the bundle's own int8 features, replay "
             "x12, distill 0.5) from the packaged default bundle alone (no Keras source) on 25 / 50 / 100 / 200 (= all "
             "192) BCCD train cells: BCCD test end to end, PBC val, time; the 200 step is the multi-domain model of #13",
             "~3 min per step"),
        Step("adapt-ood-levels", [Need(f"{adapt_work_default}/steps-packaged/adapt-100-seed0/bundle/manifest.json",
                                       f"no adapt-bccd-defaults adaptations in {adapt_work_default}/steps-packaged; "
                                       f"kept {out}/adapt_ood_levels.*")],
             [py, "-m", "hemaedge.benchmarks.tools.adapt_ood_levels", "--work",
              f"{adapt_work_default}/steps-packaged", "--steps", "25,50,100", "--out", f"{out}/adapt_ood_levels"],
             [f"{out}/adapt_ood_levels{x}" for x in (".md", ".json")],
             "the adapted bundles' OOD levels under the three rules of issue #14 (both tiers from the larger review "
             "level; each tier the larger over references; only references with enough right answers) on the BCCD "
             "train cells each adaptation did not use (run after adapt-bccd-defaults)",
             "~1 min"),
        # the default-model issue (#13): other microscopes, calibration, normalisation, the new default's checks
        Step("eos-neut-features", [Need(f"{adapt_work_default}/steps-packaged/run-train/corrections.csv",
                                        f"no reviewed BCCD train run in {adapt_work_default}/steps-packaged "
                                        f"(run adapt-bccd-defaults); kept {out}/eos_neut_features.*")],
             tool("eos_neut_features") + ["--run", f"{adapt_work_default}/steps-packaged/run-train", "--bundle",
                                          DEFAULT_BUNDLE, "--out", f"{out}/eos_neut_features"],
             [f"{out}/eos_neut_features{x}" for x in (".md", ".json")],
             "BCCD eosinophil vs neutrophil (the adapted model's main error) on BCCD train cells only, cross-validated: "
             "the bundle's backbone features against colour and nucleus-shape numbers measured on the crop",
             "~2 min"),
        Step("bccd-wbc", [], [py, "-m", "hemaedge.benchmarks.tools.bccd_wbc", "--data", f"{data}/bccd", "--bloodmnist128",
                              f"{data}/bloodmnist128", "--bundle", DEFAULT_BUNDLE, "--split", "val", "--normalize", "bundle",
                              "--name", "default_val", "--out", out],
             [f"{out}/bccd_wbc_default_val{x}" for x in (".md", ".json")],
             "BCCD white cells end to end with the default bundle and its own input contract (val)", "~2 min"),
        # BCCD test: reported once for the final setting, never used to choose anything
        Step("bccd-wbc-test", [], [py, "-m", "hemaedge.benchmarks.tools.bccd_wbc", "--data", f"{data}/bccd",
                                   "--bloodmnist128", f"{data}/bloodmnist128", "--bundle", DEFAULT_BUNDLE, "--split",
                                   "test", "--normalize", "bundle", "--name", "default_test", "--out", out],
             [f"{out}/bccd_wbc_default_test{x}" for x in (".md", ".json")],
             "BCCD test white cells end to end with the default bundle (report only, never for choosing)", "~2 min"),
        Step("calibration", [], [py, "-m", "hemaedge.benchmarks.tools.bundle_calibration", "--bundle", DEFAULT_BUNDLE,
                                 "--data", f"{data}/bloodmnist128", "--name", "default", "--out", out],
             [f"{out}/calibration_default{x}" for x in (".md", ".json")],
             "ECE of the default bundle on BloodMNIST val/test, temperature fitted on val", "~3 min"),
        Step("lab-round-trip", [], [*tool("lab_round_trip"), "--bloodmnist-val", f"{data}/bloodmnist128/val",
                                    "--pbc", f"{data}/pbc_raw_val", "--pbc-fields", "400", "--out", out],
             [f"{out}/lab_round_trip{x}" for x in (".md", ".json")],
             "pixels and answers of the packaged default with normalisation + CLAHE in one Lab pass against two "
             "(BloodMNIST-128 val, PBC fields)", "~1 min"),
        Step("normalize-cost", [], [py, "-m", "hemaedge.benchmarks.tools.normalize_cost", "--data", f"{data}/bccd",
                                    "--split", "val", "--size", "128", "--repeat", "5", "--out", out],
             [f"{out}/normalize_cost{x}" for x in (".md", ".json")],
             "cost of colour normalisation per BCCD frame against resize + CLAHE", "~1 min"),
        Step("loss-modes", [Need(os.path.expanduser("~/hemaedge-runs/model/imbalance/sampling+loss/last.keras"),
                                 f"no proxy run; kept {out}/finetune_loss_modes.*")],
             [py, "-m", "hemaedge.benchmarks.tools.finetune_loss_modes",
              os.path.expanduser("~/hemaedge-runs/model/imbalance/sampling+loss"), "--out", f"{out}/finetune_loss_modes"],
             [f"{out}/finetune_loss_modes{x}" for x in (".md", ".json")],
             "logged training loss split into inference / BN / dropout parts (docs/finetune.md)", "~2 min"),
        Step("imbalance", [Need(os.path.expanduser(f"~/hemaedge-runs/model/imbalance/{r}/metrics.json"),
                                f"no finished proxy run {r}; kept {out}/imbalance_modes.*")
                           for r in ("sampling+loss", "sampling", "neither")],
             [*tool("imbalance_compare"), *(os.path.expanduser(f"~/hemaedge-runs/model/imbalance/{r}")
                                            for r in ("sampling+loss", "sampling", "neither")),
              "--out", f"{out}/imbalance_modes"],
             [f"{out}/imbalance_modes{x}" for x in (".md", ".json")],
             "double vs single vs no imbalance correction on the small-CNN proxy (commands in "
             "~/hemaedge-runs/model/imbalance/run.sh, run2.sh; docs/finetune.md)", "seconds (~1 h of training before it)"),
        # the packaged default since 2026-12-03 (one Lab pass), checked like default-v2 from its training run; its goals
        # table in its own folder (the goals of the packaged default: step default-goals); its int8 bundle, before
        # ood_calibrate set the flips views and two OOD tiers, is src/hemaedge/models/default's model file
        Step("default-v6", [Need(os.path.expanduser("~/hemaedge-runs/default-v6/state.json"),
                                 f"no default-v6 training run; kept {out}/default-v6-ep3")],
             ["env", f"HEMAEDGE_GOALS_OUT={out}/default-v6-ep3",
              "HEMAEDGE_CHECK_SNAPSHOT=" + os.path.expanduser("~/hemaedge-runs/default-v6-ep3"),
              "benchmarks/tools/default_v2_check.sh", os.path.expanduser("~/hemaedge-runs/default-v6"), "default-v6-ep3"],
             [f"{out}/default-v6-ep3/{f}" for f in (
                 "NOTE.md", "finetune_bloodmnist128.md", "finetune_bloodmnist128.json", "finetune_bloodmnist128_curves.png",
                 "finetune_bloodmnist128_confusion.png", "bundle-int8-manifest.json", "calibration_default_v6_ep3.md",
                 "calibration_default_v6_ep3.json", "pbc_end_to_end.md", "pbc_end_to_end.json",
                 "bccd_wbc_default_v6_ep3_val.md", "bccd_wbc_default_v6_ep3_val.json", "ood_rule_default_v6_ep3.md",
                 "ood_rule_default_v6_ep3.json", "default_model_goals.md", "default_model_goals.json")],
             "the packaged default default-v6-ep3 (v5 + 4 epochs at 5e-5, one Lab pass; best val epoch 3) measured like "
             "default-v2: int8 export, calibration, PBC fields, BCCD val, OOD rule, goals", "~3 min"),
        *multi_domain_steps(py, data, out),
        Step("default-v2", [Need(os.path.expanduser("~/hemaedge-runs/default-v2/state.json"),
                                 f"no default-v2 training run; kept {out}/default-v2-epoch*")],
             # the packaged default = the run's best checkpoint, checked with full-split parity
             ["env", "HEMAEDGE_CHECK_PARITY_SAMPLE=all", f"HEMAEDGE_GOALS_OUT={out}/default-v2-final",
              "benchmarks/tools/default_v2_check.sh",
              os.path.expanduser("~/hemaedge-runs/default-v2"), "default-v2-final"],
             # default-v2-epoch1/, -epoch4/: intermediate checkpoints, kept as history (benchmarks/history/, their NOTE.md)
             [f"{out}/default-v2-{e}/{f}" for e in ("final",)
              for f in ("NOTE.md", "finetune_bloodmnist128.md", "finetune_bloodmnist128.json",
                        "finetune_bloodmnist128_curves.png", "finetune_bloodmnist128_confusion.png",
                        "bundle-int8-manifest.json", f"calibration_default_v2_{e}.md",
                        f"calibration_default_v2_{e}.json", "pbc_end_to_end.md", "pbc_end_to_end.json",
                        f"bccd_wbc_default_v2_{e}_val.md", f"bccd_wbc_default_v2_{e}_val.json",
                        f"ood_rule_default_v2_{e}.md", f"ood_rule_default_v2_{e}.json")],
             # its goals table went to benchmarks/results/ when it was packaged; now default-goals writes that one
             "the previous default (packaged 2026-12-02 to 12-03: the run's best checkpoint) end to end (snapshot, "
             "int8, PBC, BCCD val); with the run, also a goals table naming it",
             "~30 min; hours of training before it"),
        _ensemble_step(out, "ensemble-lite0-lite1", ENSEMBLE_LITE0_LITE1,
                       "weighted ensemble of the default (Lite0 epoch 10) and Lite1 (epoch 6 of 8)", "~25 min"),
        _ensemble_step(out, "ensemble-v1", ENSEMBLE_V1,
                       "weighted ensemble of the default (Lite0 epoch 10), Lite1 (epoch 6 of 8) and Lite2 "
                       "(epoch 4 of 8)", "~45 min"),
        Step("ensemble-rbc",
             [Need(os.path.expanduser(p), f"no red-cell member or crops {p}; kept {out}/ensemble-rbc/")
              for p in (*ENSEMBLE_RBC, ENSEMBLE_RBC_CROPS, ENSEMBLE_RBC_CALIB)],
             # issue #19 item 3: the same commands on the red-cell crops (12 classes; no PBC or whole-frame steps)
             ["env", "HEMAEDGE_ENSEMBLE_NICE=0", f"HEMAEDGE_ENSEMBLE_DATA={os.path.expanduser(ENSEMBLE_RBC_CROPS)}",
              f"HEMAEDGE_ENSEMBLE_CALIB={os.path.expanduser(ENSEMBLE_RBC_CALIB)}",
              "HEMAEDGE_ENSEMBLE_DATA_NAME=Chula RBC-12 crops (64 px)",
              f"HEMAEDGE_ENSEMBLE_WORK={os.path.expanduser('~/hemaedge-runs/redcells5/ensemble-rbc')}",
              f"HEMAEDGE_ENSEMBLE_RESULTS={out}/ensemble-rbc", "HEMAEDGE_ENSEMBLE_MAX_DROP=2",
              "benchmarks/tools/ensemble_check.sh", "ensemble-rbc", *(os.path.expanduser(p) for p in ENSEMBLE_RBC)],
             [f"{out}/ensemble-rbc/{f}" for f in
              ("ensemble_crops64-old.md", "ensemble_crops64-old.json", "ensemble_bench.md", "ensemble_bench.csv",
               "ensemble_bench.json", "ensemble_bench_latency.png", "ensemble_bench_pareto.png")]
             + [f"{out}/ensemble-rbc/{t}/calibration_{t}{x}" for t in ("member0-int8", "member1-int8", "member2-int8",
                                                                       "ensemble-int8") for x in (".md", ".json")],
             "weighted ensemble of three red-cell models (the packaged one's source, a separately trained weighted-loss "
             "run, the source's epoch-4 checkpoint) on the Chula crops: weights on val, int8/fp16 bundles, int8 "
             "accuracy, size/latency, kappa/AUC/CI table", "~30 min"),
        # the OOD part of "unidentified" (docs/edge.md) and the robustness ablation (docs/finetune.md)
        Step("views-check", [], tool("views_check") + ["--bundle", DEFAULT_BUNDLE, "--bloodmnist128",
                                                       f"{data}/bloodmnist128", "--name", "default", "--out", out],
             [f"{out}/views_check_default{x}" for x in (".md", ".json")],
             "test-time views off / flips / dihedral: BloodMNIST val+test accuracy, ECE, per-cell cost (same run)",
             "~5 min"),
        Step("zero-shot-errors", [], tool("zero_shot_errors") + ["--bundle", DEFAULT_BUNDLE, "--bccd", f"{data}/bccd",
                                                                 "--pbc", f"{data}/pbc_raw_val", "--bloodmnist128",
                                                                 f"{data}/bloodmnist128", "--split", "val",
                                                                 "--pbc-every", "3", "--name", "default", "--out", out],
             [f"{out}/zero_shot_errors_default{x}" for x in (".md", ".json")],
             "what drives the BCCD val errors: crop scale, centring, colour, blur, border, view averaging "
             "(BCCD val, PBC fields, BloodMNIST val) + contact sheet docs/img/zero_shot_errors_default.jpg",
             "~10 min"),
        Step("run-adapt", [], tool("run_adapt_study") + ["--bundle", DEFAULT_BUNDLE, "--data", data, "--cache",
                                                         os.path.expanduser("~/hemaedge-runs/run-adapt-features"),
                                                         "--split", "val", "--split", "train", "--split", "test",
                                                         "--draws", "100", "--name", "default", "--out", out],
             [f"{out}/run_adapt_default{x}" for x in (".md", ".json")],
             "label-free per-run adaptation (feature alignment, EM class prior, crop scale by confidence) on "
             "BCCD val/train (choose) and test (reported once), PBC fields, BloodMNIST val", "~5 min"),
        Step("ood-rule", [], tool("ood_rule") + ["--bundle", DEFAULT_BUNDLE, "--name", "default", *eval_sets,
                                                 "--val-spread", "800", "--pbc-spread", "700", "--out", out],
             [f"{out}/ood_rule_default{x}" for x in (".md", ".json")],
             "the default's unidentified rule: wrong/right flagged, confidence only vs with its OOD threshold, "
             "on BloodMNIST val, BCCD val, PBC fields", "~3 min (25 min at load 30)"),
        Step("flag-scores", [], tool("flag_scores") + ["--bundle", DEFAULT_BUNDLE, "--name", "default", *eval_sets,
                                                       "--val-spread", "800", "--pbc-spread", "300", "--out", out],
             [f"{out}/flag_scores_default{x}" for x in (".md", ".json", ".png")],
             "cheap per-cell flag scores from the bundle's outputs (msp, margin, entropy, view disagreement, crop "
             "colour): AUROC wrong-vs-right and flag rates on BCCD val, PBC, BloodMNIST val + trade-off plot",
             "~1 min"),
        Step("review-levels", [], tool("review_levels") + ["--bundle", DEFAULT_BUNDLE, "--name", "default", *eval_sets,
                                                 "--val-spread", "800", "--pbc-spread", "700", "--out", out],
             [f"{out}/review_levels_default{x}" for x in (".md", ".json")],
             "how much `edge run` flags: wrong/right answers flagged at several --review-level values and with "
             "--review-classes erythroblast,ig, on BloodMNIST val, PBC fields, BCCD val", "~1 min"),
        Step("ood-candidates", [Need(os.path.expanduser(f"{DEFAULT_KERAS_RUN}/model.keras"),
                                     f"no Keras source of the default at {DEFAULT_KERAS_RUN}; kept "
                                     f"{out}/ood_candidates_default_v2_ep10.*")],
             tool("ood_candidates") + ["--run", os.path.expanduser(DEFAULT_KERAS_RUN), "--name", "default_v2_ep10",
                                       "--data", f"{data}/bloodmnist128", "--bccd", f"{data}/bccd",
                                       "--train-per-class", "100", "--val-per-class", "100", "--out", out],
             [f"{out}/ood_candidates_default_v2_ep10{x}" for x in (".md", ".json")],
             "scores that need logits or features (energy, max-logit, Mahalanobis) on the default's float Keras "
             "source, one view: would a bundle that emits them flag BCCD's wrong answers better?", "~3 min"),
        Step("robust-ablation", [],
             tool("robust_ablation") + ["--data", f"{data}/bloodmnist128", "--bccd", f"{data}/bccd",
                                        "--work", os.path.expanduser("~/hemaedge-runs/ood/ablation"),
                                        "--per-class", "150", "--val-per-class", "25", "--size", "64", "--epochs", "2",
                                        "--batch-size", "16", "--lr", "1e-3", "--out", f"{out}/robust_ablation"],
             [f"{out}/robust_ablation{x}" for x in (".md", ".json")],
             "SMALL-SCALE PROXY ablation of the robustness pieces: BloodMNIST val and BCCD val per arm (resumable)",
             "~45 min on 2 lightly loaded cores (12 arms of 1-4 min + scoring; resumable, finished arms are skipped)"),
        # last of the default's steps: it reads the tables the steps above regenerate for the packaged default
        Step("default-goals", [Need(f"{out}/default-v6-ep3/finetune_bloodmnist128.json",
                                    f"no checks of the packaged default in {out}/default-v6-ep3")],
             tool("default_model_goals") + ["--candidate", f"{out}/default-v6-ep3", "--label", "default-v6-ep3",
                                            "--final", "--out", out],
             [f"{out}/default_model_goals{x}" for x in (".md", ".json")],
             "the goals table of issue #13 for the packaged default (default-v6-ep3: its one-view checks, and the "
             "shipped setting from the regenerated tables), from committed result files only", "seconds"),
    ]


# Issue #14: the recipes compared on BCCD train cells (adapt-recipes), from the packaged default bundle alone.
# Only --fit head recipes run from a bundle; the six-recipe comparison made with the lost Keras source (--fit tail
# included) is benchmarks/history/adapt-keras-source/adapt_recipes.md. The default recipe, over three splits:
ADAPT_RECIPES = ["head:fit=head", "head-unwatched:fit=head,max_old_drop=1"]
# The adaptation tables: train adapt's default (fit head, replay x12, distill 0.5, old microscope watched at 0.5 pt)
# and the previous default (fit tail)
ADAPT_RECIPE = ["--fit", "head", "--replay-ratio", "12", "--distill", "0.5", "--max-old-drop", "0.005"]
ADAPT_BASE_LABEL = ("packaged default default-v6-ep3-tflite-int8-mixed (src/hemaedge/models/default as "
                    "shipped: int8, flips views, two OOD tiers, no Keras source; --fit head adapts the bundle itself)")
RBC_BUNDLE = "src/hemaedge/models/rbc"


def _red_cell_steps(s: Settings, tool) -> list[Step]:
    """Issue 15 (docs/redcells.md): detection, morphology (runs + the packaged int8 bundle), speed."""
    data, out = s.data, s.out
    chula = f"{data}/chula_rbc12"
    bundle = s.get("HEMAEDGE_RBC_BUNDLE", RBC_BUNDLE)
    runs = s.get("HEMAEDGE_RBC_RUNS", " ".join(sorted(str(Path(p).parent) for p in glob.glob("runs/rbc/*/metrics.json"))))
    # backbone of the rbchead table (crops cut at 1.5 x 42.8 px, the ruler of the time); the packaged bundle is
    # this run resumed to epoch 8 (docs/redcells.md, third pass), which HEMAEDGE_RBC_SOURCE_RUN can name instead
    source_run = s.get("HEMAEDGE_RBC_SOURCE_RUN", "runs/rbc/ft-lite0-64-none")
    baseline = s.get("HEMAEDGE_RBC_BASELINE", "")  # earlier red-cell bundle(s) for the before/after rows
    need_chula = Need(chula, f"no {chula}; kept the committed red-cell tables")
    need_bundle = Need(f"{bundle}/manifest.json", f"no red-cell bundle at {bundle}; kept the committed table")
    return [
        Step("rbcdetect", [need_chula],
             [*tool("rbc_detection"), "--chula", chula, "--bccd", f"{data}/bccd", "--split", "test", "--bccd-split", "test",
              "--quiet", "--out", f"{out}/rbc_detection"],
             [f"{out}/rbc_detection.md", f"{out}/rbc_detection.json"],
             "red-cell detection: Chula RBC-12 point recall / touching cells split, BCCD RBC boxes (test splits)", "~2 min"),
        Step("rbcmodel", [need_chula, need_bundle, Need(runs.split()[0] if runs else "runs/rbc/*/metrics.json",
                                                        "no finished red-cell training runs (HEMAEDGE_RBC_RUNS)")],
             [*tool("rbc_morphology"), "--chula", chula, "--crops", "TMP/rbc64", "--bundle", bundle,
              "--scale", "auto", "--out", f"{out}/rbc_morphology", *[a for r in runs.split() for a in ("--runs", r)]],
             [f"{out}/rbc_morphology.md", f"{out}/rbc_morphology.json"],
             f"red-cell morphology: training runs and the bundle {bundle} on the Chula test frames",
             "~4 min (the crops are remade, ~10 s)", run=_run_rbcmodel),
        Step("rbcval", [need_chula, need_bundle,
                        Need(baseline.split()[0] if baseline else "", "no earlier red-cell bundle to compare "
                             "(HEMAEDGE_RBC_BASELINE); kept the committed table")],
             [*tool("rbc_morphology"), "--chula", chula, "--crops", "TMP/rbc64", "--bundle", bundle,
              *[a for b in baseline.split() for a in ("--compare", b)], "--split", "val", "--scale", "auto",
              "--out", f"{out}/rbc_morphology_val", *[a for r in runs.split() for a in ("--runs", r)]],
             [f"{out}/rbc_morphology_val.md", f"{out}/rbc_morphology_val.json"],
             f"red-cell morphology on the Chula val frames (the choice): {bundle} beside the earlier bundle(s) "
             "of HEMAEDGE_RBC_BASELINE", "~2 min (the crops are remade, ~10 s)", run=_run_rbcmodel),
        Step("rbcsize", [need_chula, need_bundle],
             [*tool("rbc_size_features"), "--chula", chula, "--bundle", bundle, "--scale", "auto",
              "--out", f"{out}/rbc_size_features"],
             [f"{out}/rbc_size_features.md", f"{out}/rbc_size_features.json"],
             f"red-cell size layer over {bundle}'s own probabilities: feature arms (Chula train fit, val score; "
             "--rbc-scale auto)", "~2 min"),
        Step("rbcspeed", [need_chula, need_bundle],
             [*tool("rbc_speed"), "--rbc", bundle, *[a for b in baseline.split() for a in ("--rbc", b)], "--chula", chula, "--bccd", f"{data}/bccd", "--frames", "40",
              "--threads", "1", "--threads", "2", "--out", f"{out}/rbc_speed"],
             [f"{out}/rbc_speed.md", f"{out}/rbc_speed.json"],
             f"red-cell analysis per frame with {bundle}, and what it adds to the white-cell pipeline", "~2 min"),
        Step("rbclayer", [need_chula, need_bundle],
             [*tool("rbc_speed"), "--rbc", bundle, "--without-layer", "--chula", chula, "--frames", "40",
              "--threads", "2", "--out", f"{out}/rbc_speed_layer"],
             [f"{out}/rbc_speed_layer.md", f"{out}/rbc_speed_layer.json"],
             f"what {bundle}'s size layer costs per frame (with / without it, interleaved)", "~1 min"),
        Step("rbchead", [need_chula, Need(f"{source_run}/model.keras", f"no red-cell source run at {source_run} "
                                                                        "(HEMAEDGE_RBC_SOURCE_RUN)")],
             [*tool("rbc_head_imbalance"), source_run, "--crops", "TMP/crops", "--out-run", "TMP/head-run",
              "--epochs", "30", "--out", f"{out}/rbc_head_imbalance"],
             [f"{out}/rbc_head_imbalance.md", f"{out}/rbc_head_imbalance.json"],
             "red-cell class imbalance on the classifier head (none / weighted sampling / focal, mixup off), "
             f"backbone of {source_run}", "~15 min (crops remade at the run's 42.8 px ruler)", run=_run_rbchead),
        Step("rbcdomain", [need_chula, need_bundle],
             [*tool("rbc_domain"), *[a for b in baseline.split() for a in ("--bundle", b)], "--bundle", bundle,
              "--chula", chula, "--bccd", f"{data}/bccd", "--pbc", f"{data}/pbc_raw_val", "--frames", "40", "--quiet",
              "--out", f"{out}/rbc_domain"],
             [f"{out}/rbc_domain.md", f"{out}/rbc_domain.json"],
             f"red-cell morphology on BCCD/PBC frames (share called schistocyte, domain check, frame normalisation) "
             f"with {bundle}", "~3 min"),
    ]


def _run_rbchead(s: Settings, step: Step) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        bounded(s, [s.he, "data", "rbc-crops", f"{s.data}/chula_rbc12", "--out", f"{tmp}/crops", "--diameter", "42.8",
                    "--exclude", "uncategorised"])
        bounded(s, [w.replace("TMP", tmp) if w.startswith("TMP/") else w for w in step.command])
    return []


def _run_rbcmodel(s: Settings, step: Step) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        # the labelled crops at the bundle's training geometry (the packaged model: 1.5 x 42.8 px, the ruler of the time)
        extra = s.get("HEMAEDGE_RBC_CROPS_ARGS", "--diameter 42.8").split()
        if "--size" not in extra:  # cut at the bundle's input size (the same field of view, more pixels at 80 px)
            bundle = s.get("HEMAEDGE_RBC_BUNDLE", RBC_BUNDLE)
            extra += ["--size", str(json.loads(Path(bundle, "manifest.json").read_text())["input"]["size"])]
        bounded(s, [s.he, "data", "rbc-crops", f"{s.data}/chula_rbc12", "--out", f"{tmp}/rbc64", "--exclude", "uncategorised",
                    *extra])
        bounded(s, [f"{tmp}/rbc64" if w == "TMP/rbc64" else w for w in step.command])
    return []


def _bench_name(s: Settings) -> str:
    return s.get("HEMAEDGE_BENCH_NAME", "bench_desktop")


def _bench_command(s: Settings) -> list[str]:
    table = s.get("HEMAEDGE_BENCH_EXPORT_TABLE")
    if not table and s.export_table and Path(f"{s.export_table}.json").is_file():
        table = f"{s.export_table}.json"
    cmd = [s.he, "bench", "run", *([s.export] if s.export else []), "--preset", s.get("HEMAEDGE_BENCH_PRESET", "desktop"),
           "--data", f"{s.data}/bloodmnist128", "--frames", f"{s.data}/bccd", "--out", s.out, "--name", _bench_name(s),
           "--quiet"]
    cmd += ["--keras", s.keras] if s.keras else []
    cmd += ["--export-table", table] if table else []
    cmd += ["--accuracy", s.get("HEMAEDGE_BENCH_ACCURACY")] if s.get("HEMAEDGE_BENCH_ACCURACY") else []
    cmd += ["--spread", s.limit] if s.limit else []
    training = s.get("HEMAEDGE_BENCH_TRAINING_RUNS", "runs" if Path("runs").is_dir() else "")
    for t in training.split():
        cmd += ["--training-runs", t]
    return cmd


# ----------------------------------------------------------------------------- steps with logic


def _run_export(s: Settings, step: Step) -> list[str]:
    if not s.export:
        raise Skip("no EXPORT_DIR given")
    if not s.export_table:
        raise Skip(f"EXPORT_DIR {s.export} is a single bundle, not an export folder")
    if glob.glob(f"{s.export}/*/manifest.json") and s.get("HEMAEDGE_EXPORT_FORCE", "0") != "1":
        if not Path(f"{s.export_table}.json").is_file():
            raise Skip(f"{s.export} holds an export but its table {s.export_table}.json is not here "
                       "(HEMAEDGE_EXPORT_FORCE=1 exports again)")
        return [f"reused the finished export in {s.export} and its table {s.export_table}.{{md,json}}"]
    if not s.keras:
        raise Skip(f"no KERAS_MODEL to export into {s.export}")
    if not Path(s.keras).is_file():
        raise StepFailed(2, f"KERAS_MODEL {s.keras} not found")
    bounded(s, step.command)
    return []


def _run_edge(s: Settings, step: Step) -> list[str]:
    Path(s.out, "edge_run_bccd").mkdir(parents=True, exist_ok=True)
    runs = [(_default_label(), DEFAULT_BUNDLE)]
    notes = []
    if s.export and Path(s.export, "tflite-fp32", "manifest.json").is_file():
        runs.append((FP32_LABEL, f"{s.export}/tflite-fp32"))
    else:
        notes.append(f"{FP32_LABEL} runs skipped: no {s.export or 'EXPORT_DIR'}/tflite-fp32 bundle; "
                     f"kept {s.out}/edge_run_bccd/{FP32_LABEL}_run*")
    for label, bundle in runs:
        with tempfile.TemporaryDirectory() as tmp:
            for i in (1, 2, 3):
                run_dir = f"{tmp}/{label}_run{i}"
                bounded(s, [bundle if w == "BUNDLE" else run_dir if w == "TMP/LABEL_runN" else w for w in step.command])
                shutil.copyfile(f"{run_dir}/summary.json", f"{s.out}/edge_run_bccd/{label}_run{i}.summary.json")
    return notes


class StepFailed(Exception):
    def __init__(self, code: int, message: str = ""):
        super().__init__(message)
        self.code = code


def bounded(s: Settings, command: list[str]) -> None:
    """One command, niced; after HEMAEDGE_STEP_TIMEOUT it gets SIGINT (the bench keeps finished rows), then SIGKILL."""
    print("   $ " + " ".join(command), flush=True)
    proc = subprocess.Popen(["nice", "-n", "10", *command], env=s.env)
    try:
        code = proc.wait(timeout=s.timeout or None)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise StepFailed(124, f"a command ran past HEMAEDGE_STEP_TIMEOUT={s.timeout} s") from None
    if code:
        raise StepFailed(code)


def run_step(s: Settings, step: Step) -> list[str]:
    for need in step.inputs:
        need.check()
    if step.run is not None:
        return step.run(s, step)
    bounded(s, step.command)
    return []


# ----------------------------------------------------------------------------- command line


def parse(argv: list[str], env: dict | None = None) -> tuple[Settings, dict]:
    opts = {"list": False, "only": [], "skip": []}
    pos: list[str] = []
    args = list(argv)
    while args:
        a = args.pop(0)
        if a == "--list":
            opts["list"] = True
        elif a in ("--only", "--skip") or a.startswith(("--only=", "--skip=")):
            key, _, value = a[2:].partition("=")
            if not value:
                if not args:
                    raise UsageError(f"--{key} needs STEP[,STEP]")
                value = args.pop(0)
            opts[key] += [v for v in value.split(",") if v]
        elif a in ("-h", "--help"):
            opts["help"] = True
        elif a.startswith("-"):
            raise UsageError(f"unknown option {a}")
        else:
            pos.append(a)
    if len(pos) > 2:
        raise UsageError(f"at most EXPORT_DIR and KERAS_MODEL, got: {' '.join(pos)}")
    env = dict(os.environ if env is None else env)
    s = Settings(export=(pos[0] if pos else env.get("HEMAEDGE_BENCH_EXPORT", "")).rstrip("/"),
                 keras=pos[1] if len(pos) > 1 else env.get("HEMAEDGE_BENCH_KERAS", ""), env=env)
    names = [st.name for st in steps(s)]
    for n in opts["only"] + opts["skip"]:
        if n not in names:
            raise UsageError(f"unknown step '{n}'; steps: {' '.join(names)}")
    return s, opts


def selected(name: str, opts: dict) -> bool:
    return (not opts["only"] or name in opts["only"]) and name not in opts["skip"]


def main(argv: list[str] | None = None) -> int:
    os.chdir(REPO)
    try:
        s, opts = parse(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"run_all: {exc}", file=sys.stderr)
        return 2
    if opts.get("help"):
        print(__doc__)
        return 0
    s.env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    table = steps(s)
    if opts["list"]:
        for st in table:
            print(f"{st.name}{'' if selected(st.name, opts) else ' (not selected)'}: {st.about}")
            print(f"  cost: {st.cost}")
            print(f"  command: {' '.join(st.command)}")
            print(f"  outputs: {' '.join(st.outputs)}")
            if not st.outputs:
                print("  note: writes OUT/export_<EXPORT_DIR name>.{md,json} when given an EXPORT_DIR")
        return 0
    Path(s.out).mkdir(parents=True, exist_ok=True)
    summary, failed = [], False
    for st in table:
        if not selected(st.name, opts):
            continue
        print(f"== {st.name}: {st.about} -> {' '.join(st.outputs) or 'nothing'}", flush=True)
        start = time.monotonic()
        try:
            notes = run_step(s, st)
            status = f"ok ({time.monotonic() - start:.0f} s)" + "".join(f"; {n}" for n in notes)
        except Skip as why:
            print(f"   skipped: {why}")
            status = f"skipped: {why}"
        except StepFailed as exc:
            failed = True
            status = (f"FAILED: {exc}" if exc.code == 124 else
                      f"FAILED (exit {exc.code} after {time.monotonic() - start:.0f} s)" + (f": {exc}" if str(exc) else ""))
            print(f"   {status}", file=sys.stderr)
        summary.append(f"{st.name:<13} {status}")
    print(f"== summary ({s.out})")
    for line in summary:
        print(f"  {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
