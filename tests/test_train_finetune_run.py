"""Fine-tuning end to end on a small ImageFolder tree with its own 3-class list: outputs,
checkpoint/resume, the CLI's error handling, and a training step with a second Keras backend."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")

from finetune_helpers import TREE_CLASSES, tiny_config, tiny_runs, tree3  # noqa: E402,F401

from hemaedge.edge.preprocess import InputContract, prepare_batch, read_image_rgb  # noqa: E402


def _history(out):
    with open(Path(out) / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_on_a_tree_with_its_own_classes(tiny_runs, tree3):
    import keras

    out = Path(tiny_runs[0].out)
    for name in ("best.keras", "best.json", "last.keras", "state.json", "history.csv", "curves.png",
                 "metrics.json", "confusion_test.png", "summary.md"):
        assert (out / name).is_file(), name
    side = json.loads((out / "best.json").read_text())
    assert side["classes"] == sorted(TREE_CLASSES.values())
    contract = InputContract.from_dict(side["input"])
    assert (contract.size, contract.preprocess, contract.scaling) == (32, "clahe", "raw")
    # the training set's colour reference travels in the contract (and in state.json for resume)
    assert contract.normalize["method"] == "lab-anchors"
    assert json.loads((out / "state.json").read_text())["normalize"] == contract.normalize
    # the loss probes are logged every epoch (see docs/finetune.md: the rising-loss question)
    assert all(float(r["train_eval_loss"]) > 0 and r["loss_mixed"] and r["loss_clean"] for r in _history(out))
    assert side["weights"] == "random init (from scratch)"
    assert set(side["metrics"]) == {"val", "test"}
    assert len(_history(out)) == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] == 18 and len(metrics["test"]["confusion_matrix"]) == 3
    best = max(float(r["val_accuracy"]) for r in _history(out))
    assert metrics["val"]["accuracy"] == pytest.approx(best, abs=1e-6)  # best.keras is the best epoch
    # best.keras + its contract classify a real image the way the device would feed it
    model = keras.models.load_model(out / "best.keras")
    img = read_image_rgb(next((tree3 / "test" / "thrombocyte").glob("*.jpg")))
    proba = np.asarray(model(prepare_batch([img], contract), training=False))
    assert proba.shape == (1, 3) and abs(proba.sum() - 1) < 1e-4


def test_publish_results_table(tiny_runs, tmp_path):
    from hemaedge.train.finetune import publish

    out = Path(tiny_runs[0].out)
    assert (out / "model.keras").stat().st_size < (out / "best.keras").stat().st_size  # no optimizer slots
    files = publish(out, tmp_path / "results" / "finetune_tree3", date="2026-11-22")
    assert {f.name for f in files} == {"finetune_tree3.md", "finetune_tree3.json",
                                       "finetune_tree3_curves.png", "finetune_tree3_confusion.png"}
    md = files[0].read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert f"{metrics['test']['accuracy'] * 100:.2f}" in md and "smallcnn" in md and "2026-11-22" in md
    rows = json.loads(files[1].read_text())["rows"]
    assert rows[0]["test_accuracy"] == metrics["test"]["accuracy"] and rows[0]["epochs"] == 2


def test_resume_continues_where_it_stopped(tree3, tiny_runs, tmp_path):
    import keras

    from hemaedge.train.finetune import FinetuneError, finetune

    quiet = dict(log=lambda *_: None)
    whole = tiny_runs[0]  # the same settings, trained for 2 epochs without interruption
    first = tiny_config(tree3, tmp_path / "run", epochs=1, seed=whole.seed, bootstrap=0)
    finetune(first, **quiet)
    row1 = _history(first.out)[0]
    steps = int(np.ceil(36 / first.batch_size))
    # An interrupted run holds last.keras (weights + optimizer) and state.json: continue to 2 epochs.
    with pytest.raises(FinetuneError, match="--resume"):
        finetune(first, **quiet)
    with pytest.raises(FinetuneError, match="different settings.*lr"):
        finetune(tiny_config(tree3, tmp_path / "run", epochs=2, seed=whole.seed, lr=1e-3), resume=True, **quiet)
    finetune(tiny_config(tree3, tmp_path / "run", epochs=2, seed=whole.seed, bootstrap=0), resume=True, **quiet)
    rows = _history(first.out)
    assert [r["epoch"] for r in rows] == ["1", "2"] and rows[0] == row1
    assert float(rows[1]["lr"]) == pytest.approx(5e-5)  # cosine position kept: epoch 2 of 2
    last = keras.models.load_model(Path(first.out) / "last.keras")
    assert int(last.optimizer.iterations) == 2 * steps  # optimizer state carried over
    # ... and it ends close to the uninterrupted run: same batches, augmentations and mixups, but
    # not bit-identical (max difference ~2e-4 here; Keras does not restore dropout's random state)
    ref = keras.models.load_model(Path(whole.out) / "last.keras")
    diff = np.concatenate([np.abs(a - b).ravel() for a, b in zip(last.get_weights(), ref.get_weights())])
    assert diff.max() < 1e-3 and np.median(diff) < 5e-5
    assert float(rows[1]["val_accuracy"]) == pytest.approx(float(_history(whole.out)[1]["val_accuracy"]))


def test_a_focal_loss_run_trains_with_it_and_resumes_only_with_it(tree3, tmp_path):
    """`--loss focal`: the run records it, its logged loss is the focal loss (smaller than the
    cross-entropy of the same predictions), and a resume with another loss is refused."""
    from hemaedge.train.finetune import FinetuneError, finetune

    quiet = dict(log=lambda *_: None)
    cfg = tiny_config(tree3, tmp_path / "focal", epochs=1, bootstrap=0, loss="focal", focal_gamma=2.0, mixup_p=0.0)
    finetune(cfg, **quiet)
    state = json.loads((Path(cfg.out) / "state.json").read_text())
    assert state["config"]["loss"] == "focal" and state["config"]["focal_gamma"] == 2.0
    row = _history(cfg.out)[0]
    # probe batches without mixup: focal loss < plain cross-entropy on the training images
    assert 0 < float(row["loss_clean"]) < float(row["train_eval_loss"])
    with pytest.raises(FinetuneError, match="different settings.*loss"):
        finetune(tiny_config(tree3, tmp_path / "focal", epochs=2, bootstrap=0, mixup_p=0.0), resume=True, **quiet)


def _cli(*args):
    from click.testing import CliRunner

    from hemaedge.cli import main

    return CliRunner().invoke(main, ["train", *args])


def test_cli_reports_bad_input_without_traceback(tmp_path, tree3):
    r = _cli("finetune", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and "Error:" in r.output and "missing" in r.output
    assert r.exc_info is None or r.exc_info[0] is SystemExit
    r = _cli("finetune", "--data", str(tree3), "--out", str(tmp_path / "o"), "--size", "300")
    assert r.exit_code == 2 and "28<=x<=224" in r.output
    bad = tmp_path / "resnet50_notop.h5"
    bad.write_bytes(b"junk")
    r = _cli("finetune", "--data", str(tree3), "--out", str(tmp_path / "o2"), "--backbone", "resnet50",
             "--weights", str(bad), "--size", "32", "--epochs", "1")
    assert r.exit_code == 2 and "published hash" in r.output and "refusing" in r.output
    r = _cli("ensemble", str(tmp_path / "nope.keras"), str(tmp_path / "nope2.keras"), "--data", str(tree3),
             "--out", str(tmp_path / "e"))
    assert r.exit_code == 2 and "nope.keras" in r.output


TORCH_STEP = """
import sys
from hemaedge.train.finetune import FinetuneConfig, finetune
import keras
assert keras.backend.backend() == "torch"
finetune(FinetuneConfig(data=sys.argv[1], out=sys.argv[2], backbone="smallcnn", weights=None,
         size=32, epochs=1, batch_size=36, limit=12, bootstrap=0), log=print)
"""


@pytest.mark.slow  # starts a second Python with torch + Keras: ~30 s on an idle 2-core CPU
def test_one_training_step_with_the_torch_backend_loads_in_tensorflow(tree3, tmp_path):
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch not installed: no second Keras backend to try")
    import keras

    out = tmp_path / "torch_run"
    r = subprocess.run([sys.executable, "-c", TORCH_STEP, str(tree3), str(out)], capture_output=True,
                       text=True, timeout=300, env={**os.environ, "KERAS_BACKEND": "torch"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "backend torch" in json.loads((out / "metrics.json").read_text())["machine"]
    assert keras.backend.backend() == "tensorflow"
    model = keras.models.load_model(out / "best.keras")  # trained with torch, loaded with TF
    x = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    proba = np.asarray(model(x, training=False))
    assert proba.shape == (2, 3) and np.allclose(proba.sum(1), 1, atol=1e-4)
