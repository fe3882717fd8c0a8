"""`hemaedge train hybrid` end to end on a tiny real slice, and its refusals."""
import json

import pytest
from click.testing import CliRunner

from hemaedge.cli import main


def _run(args, env=None):
    return CliRunner().invoke(main, ["train", "hybrid", *args], env=env)


@pytest.fixture(scope="module")
def run_dir(bloodmnist128, tmp_path_factory):
    out = tmp_path_factory.mktemp("hybrid") / "run"
    cache = out.parent / "cache"
    args = ["--data", str(bloodmnist128), "--backbone", "efficientnet-lite0", "--weights", "none",
            "--size", "32", "--preprocess", "masked-rgb", "--augment", "paper", "--per-class", "4",
            "--heads", "svm,knn,rf,ann", "--ann-epochs", "2", "--bootstrap", "50", "--jobs", "1",
            "--cache-dir", str(cache), "--out", str(out), "--quiet"]
    res = _run(args)
    assert res.exit_code == 0, res.output + str(res.exception)
    return out, args, res


def test_writes_models_metrics_plots_and_summary(run_dir):
    out, _, res = run_dir
    m = json.loads((out / "metrics.json").read_text())
    assert [r["head"] for r in m["rows"]] == ["svm", "knn", "rf", "ann"]
    assert m["extraction"]["train"]["n"] == 3 * 8 * 4  # tripled by the paper's augmentation
    assert m["extraction"]["test"]["n"] == 8 * 4
    assert m["backbone"]["weights"] == "random init (from scratch)"  # which weights actually ran
    for head in ("svm", "knn", "rf", "ann"):
        t = m["heads"][head]["metrics"]["test"]
        assert 0 <= t["accuracy"] <= 1 and len(t["accuracy_ci95"]) == 2 and t["n"] == 32
        assert (out / f"confusion_{head}.png").read_bytes()[:4] == b"\x89PNG"
    for f in ("svm.skops", "svm.onnx", "knn.skops", "rf.skops", "fused_ann.keras", "ann_head.keras"):
        assert (out / f).stat().st_size > 0, f
    side = json.loads((out / "fused_ann.json").read_text())
    assert side["classes"][0] == "basophil" and side["input"]["preprocess"] == "masked-rgb"
    assert side["input"]["size"] == 32 and side["input"]["scaling"] == "raw"
    assert side["weights"] == "random init (from scratch)" and "accuracy" in side["metrics"]["test"]
    assert side["fused_check_max_abs_diff"] < 1e-4
    summary = (out / "summary.md").read_text()
    assert "| efficientnet-lite0 | 32 | masked-rgb | paper | 96 | svm |" in summary and "46 fits" in summary
    assert not list(out.glob("*.tmp*"))


def test_fused_model_matches_the_metrics(run_dir, bloodmnist128):
    from hemaedge.edge.preprocess import InputContract, prepare_batch
    from hemaedge.train.heads import load_fused
    from hybrid_helpers import load_slice

    out, _, _ = run_dir
    side = json.loads((out / "fused_ann.json").read_text())
    x, y, _ = load_slice(bloodmnist128, "test", 4)
    model = load_fused(out / "fused_ann.keras")
    p = model.predict(prepare_batch(x, InputContract.from_dict(side["input"])), verbose=0)
    assert (p.argmax(1) == y).mean() == pytest.approx(side["metrics"]["test"]["accuracy"])


def test_second_run_uses_the_feature_cache(run_dir):
    out, args, _ = run_dir
    args = list(args)
    args[args.index("--out") + 1] = str(out.parent / "again")
    args[args.index("--heads") + 1] = "knn"
    res = _run(args)
    assert res.exit_code == 0
    assert res.output.count("(cache;") == 3


def test_bad_data_path_is_a_clear_error(tmp_path):
    res = _run(["--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 2 and "Error:" in res.output and "Traceback" not in res.output


def test_unknown_head_is_refused(tmp_path):
    res = _run(["--data", str(tmp_path), "--heads", "svm,xgboost", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "xgboost" in res.output


def test_local_weights_with_a_wrong_hash_are_refused(tmp_path, bloodmnist128):
    fake = tmp_path / "efficientnetv2-b0_notop.h5"
    fake.write_bytes(b"not the published weights")
    res = _run(["--data", str(bloodmnist128), "--backbone", "efficientnetv2b0", "--weights", str(fake),
                "--limit-per-class", "1", "--out", str(tmp_path / "o"), "--quiet"])
    assert res.exit_code == 2, res.output
    assert "Error:" in res.output and "refusing" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_published_table_is_built_from_run_results(run_dir, tmp_path):
    from hemaedge.benchmarks.tools.hybrid_table import plot, table_markdown

    out, _, _ = run_dir
    m = json.loads((out / "metrics.json").read_text())
    entries = [{"backbone": "efficientnet-lite0", "preprocess": "masked-rgb", "augment": "paper", "size": 32, "status": "ok", "extraction": m["extraction"],
                "date": m["date"], "machine": m["machine"]["summary"], "weights": m["backbone"]["weights"],
                "svm": {k: m["heads"]["svm"][k] for k in ("n_fits", "search_seconds", "refit_seconds", "best_params")},
                "rows": m["rows"]},
               {"backbone": "resnet50", "status": "skipped: ImageNet weights not on this machine", "rows": []}]
    md = table_markdown(entries, "python -m hemaedge.benchmarks.tools.hybrid_table --data X")
    best = max(m["rows"], key=lambda r: r["test_acc"])
    assert f"{best['test_acc'] * 100:.2f} % test accuracy" in md
    assert "resnet50: skipped" in md and md.count("| efficientnet-lite0 | 32 | masked-rgb | paper |") == 4 + 1
    png = plot(entries, tmp_path / "t.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
