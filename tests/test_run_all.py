"""benchmarks/tools/run_all.py: every committed result is an output of one Step of its table,
`--list` does no work, steps skip or fail loudly; and the fine-tuning table collector on a small
finished run."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = "benchmarks/results"


def _env(**extra) -> dict:
    """The caller's environment without HEMAEDGE_* settings, so the steps use their defaults."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEMAEDGE_")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _run_all(*args, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hemaedge.benchmarks.tools.run_all", *args], cwd=REPO,
                          env=_env(**env), capture_output=True, text=True, timeout=300)


def _listed_outputs(listing: str) -> set[str]:
    return {p for line in listing.splitlines() if line.startswith("  outputs: ")
            for p in line.split(": ", 1)[1].split()}


def _committed_results() -> list[str]:
    if shutil.which("git") is None:
        pytest.skip("git not installed")
    p = subprocess.run(["git", "ls-files", RESULTS], cwd=REPO, capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"not a git checkout: {p.stderr.strip()}")
    return p.stdout.split()


def _bench_arguments() -> list[str]:
    """EXPORT_DIR and KERAS_MODEL of the committed bench table (its recorded command): the
    arguments the committed results were made with, so the export table they name is claimed."""
    cmd = shlex.split(json.loads((REPO / RESULTS / "bench_desktop.json").read_text())["command"])
    rest = cmd[cmd.index("run") + 1:]
    targets = rest[:next((i for i, a in enumerate(rest) if a.startswith("-")), len(rest))]
    keras = [rest[i + 1] for i, a in enumerate(rest) if a == "--keras"]
    return targets[:1] + keras[:1]


def test_every_committed_result_is_an_output_of_a_step(tmp_path, monkeypatch):
    from hemaedge.benchmarks.tools.run_all import Settings, steps

    committed = _committed_results()
    assert committed, "nothing committed under benchmarks/results"
    monkeypatch.chdir(REPO)
    export, keras = (_bench_arguments() + ["", ""])[:2]
    table = steps(Settings(export=export, keras=keras, env=_env()))
    # ood-calibrate sets the packaged default's OOD levels and views, which pbc and the later steps read
    assert [s.name for s in table][:10] == ["finetune", "hybrid", "export", "bench", "ood-calibrate", "segmentation",
                                            "pbc", "edge", "svm", "soak"]
    claimed = {o for s in table for o in s.outputs}
    orphans = sorted(set(committed) - claimed)
    assert not orphans, (f"committed but made by no Step of benchmarks/tools/run_all.py: {orphans}; add a Step, "
                         "or `git mv` them to benchmarks/history/ and say why in its README")
    # --list prints the same table
    p = _run_all("--list", *_bench_arguments())
    assert p.returncode == 0, p.stderr
    assert _listed_outputs(p.stdout) == claimed


def test_the_shell_entry_point_still_works():
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "run_all.sh"), "--list", "--only", "svm"], cwd=REPO,
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "svm: fast SVM grid" in p.stdout, p.stderr


def test_list_does_no_work_and_follows_out_and_selection(tmp_path):
    out = tmp_path / "out"
    p = _run_all("--list", "--only", "finetune,svm", HEMAEDGE_BENCH_OUT=out)
    assert p.returncode == 0, p.stderr
    assert not out.exists()  # nothing written, nothing created
    outputs = _listed_outputs(p.stdout)
    assert outputs and all(o.startswith(f"{out}/") for o in outputs)
    assert f"{out}/hybrid_svm_check.json" in outputs
    assert "hybrid (not selected):" in p.stdout and "svm:" in p.stdout and "finetune:" in p.stdout
    assert "--collect-only" in p.stdout  # the hybrid table trains nothing unless asked to
    assert "--collect-only" not in _run_all("--list", HEMAEDGE_HYBRID_TRAIN=1).stdout


@pytest.mark.parametrize("args, message", [(["--only", "finetune,tables"], "unknown step 'tables'"),
                                           (["--frobnicate"], "unknown option --frobnicate"),
                                           (["a", "b", "c"], "at most EXPORT_DIR and KERAS_MODEL")])
def test_user_mistakes_exit_2_with_a_message(args, message):
    p = _run_all(*args)
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr


def test_missing_inputs_are_skipped_with_the_reason(tmp_path):
    out = tmp_path / "out"
    p = _run_all("--only", "finetune,hybrid,export", HEMAEDGE_BENCH_OUT=out,
                 HEMAEDGE_FINETUNE_RUN=tmp_path / "no-run", HEMAEDGE_HYBRID_RUNS=tmp_path / "no-hybrid")
    assert p.returncode == 0, p.stdout + p.stderr
    summary = p.stdout.split("== summary", 1)[1]
    assert f"finetune      skipped: no run at {tmp_path / 'no-run'}" in summary
    assert f"hybrid        skipped: no finished hybrid run under {tmp_path / 'no-hybrid'}" in summary
    assert "export        skipped: no EXPORT_DIR given" in summary
    assert list(out.iterdir()) == []  # the committed tables would have been left alone


def test_a_failing_step_is_reported_and_fails_the_run(tmp_path):
    p = _run_all("--only", "pbc", HEMAEDGE_BENCH_OUT=tmp_path / "out", HEMAEDGE_PBC_BUNDLE=tmp_path / "missing")
    assert p.returncode == 1
    assert "pbc           FAILED (exit 2" in p.stdout.split("== summary", 1)[1]


# --- the fine-tuning table collector ------------------------------------------------------------

def _finished_finetune_run(root: Path) -> Path:
    """A small finished `train finetune` run folder: what the collector reads (metrics.json and the
    two figures), with the fields and shapes `finetune` writes."""
    import cv2

    run = root / "runs" / "finetune-tiny"
    run.mkdir(parents=True)
    classes = ["lymphocyte", "neutrophil", "platelet"]
    confusion = np.array([[5, 1, 0], [0, 6, 0], [1, 0, 5]])
    support = confusion.sum(axis=1)
    recall = np.diag(confusion) / support
    precision = np.diag(confusion) / confusion.sum(axis=0)
    f1 = 2 * precision * recall / (precision + recall)
    test = {"accuracy": float(np.trace(confusion) / confusion.sum()), "macro_f1": float(f1.mean()),
            "kappa": 0.75, "roc_auc_ovr": 0.93, "accuracy_ci95": [0.72, 1.0], "n": int(confusion.sum()),
            "confusion_matrix": confusion.tolist(),
            "per_class": {c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
                          for c, p, r, f, s in zip(classes, precision, recall, f1, support)}}
    metrics = {"backbone": "smallcnn", "weights": "random init (from scratch)", "input_size": 32,
               "epochs_trained": 2, "best_epoch": 2, "machine": "2-core x86_64 (test)", "model_bytes": 123_456,
               "parameters": 10_000, "train_seconds": 90.0,
               "history": [{"epoch": e, "lr": 1e-4, "loss": 1.0 / e, "accuracy": 0.5 * e, "val_loss": 1.1 / e,
                            "val_accuracy": 0.4 * e, "seconds": 45.0} for e in (1, 2)],
               "commands": ["hemaedge train finetune --data tree3 --out runs/finetune-tiny --epochs 2"],
               "config": {"data": str(root / "tree3"), "epochs": 2},
               "val": {**test, "accuracy": 0.8}, "test": test}
    (run / "metrics.json").write_text(json.dumps(metrics))
    for name in ("curves.png", "confusion_test.png"):
        cv2.imwrite(str(run / name), np.full((8, 8, 3), 200, np.uint8))
    return run


def test_collector_writes_the_table_publish_writes(tmp_path):
    from click.testing import CliRunner

    from hemaedge.benchmarks.tools.finetune_table import main
    from hemaedge.train.finetune import publish

    run = _finished_finetune_run(tmp_path)
    res = CliRunner().invoke(main, [str(run), "--out", str(tmp_path / "collected" / "finetune_tree3")])
    assert res.exit_code == 0, res.output
    expected = publish(run, tmp_path / "published" / "finetune_tree3")
    for want in expected:
        got = tmp_path / "collected" / want.name
        assert got.read_bytes() == want.read_bytes(), want.name  # same code, same table
        assert f"wrote {got}" in res.output
    md = (tmp_path / "collected" / "finetune_tree3.md").read_text()
    test = json.loads((run / "metrics.json").read_text())["test"]
    assert f"{test['accuracy'] * 100:.2f} (72.00–100.00)" in md and "| 2 (2) |" in md
    assert "`hemaedge train finetune --data tree3 --out runs/finetune-tiny --epochs 2`" in md


def test_collector_refuses_an_unfinished_run(tmp_path):
    from click.testing import CliRunner

    from hemaedge.benchmarks.tools.finetune_table import main

    run = _finished_finetune_run(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    del metrics["test"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    res = CliRunner().invoke(main, [str(run), "--out", str(tmp_path / "t")])
    assert res.exit_code == 2 and "metrics.json has no test results" in res.output
    assert not list(tmp_path.glob("t*"))
    res = CliRunner().invoke(main, [str(tmp_path / "nowhere"), "--out", str(tmp_path / "t")])
    assert res.exit_code == 2 and f"no run at {tmp_path / 'nowhere'}" in res.output


def test_run_all_collects_a_finished_finetune_run(tmp_path):
    run = _finished_finetune_run(tmp_path)
    out = tmp_path / "out"
    p = _run_all("--only", "finetune", HEMAEDGE_BENCH_OUT=out, HEMAEDGE_FINETUNE_RUN=run)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "finetune      ok" in p.stdout.split("== summary", 1)[1]
    assert sorted(f.name for f in out.iterdir()) == sorted(
        f"finetune_bloodmnist128{s}" for s in (".md", ".json", "_curves.png", "_confusion.png"))
