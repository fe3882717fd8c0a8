"""`hemaedge train adapt` with a small real Keras model (a from-scratch CNN trained here on real
BloodMNIST-128 images): new cells from a class-folder tree and from a reviewed run, replay of
the original training data, held-out choice, int8 bundle with provenance in its manifest."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from finetune_helpers import tiny_config
from review_helpers import sample_run, sample_run_master  # noqa: F401  (fixtures)
from hemaedge.cli import main

CLASSES = ("basophil", "eosinophil", "erythroblast", "immature_granulocyte", "lymphocyte", "monocyte",
           "neutrophil", "platelet")
_CACHE: dict = {}


def small_tree(src: Path, dst: Path, per_split=(("train", 10), ("val", 4), ("test", 4))) -> Path:
    for split, n in per_split:
        for c in CLASSES:
            out = dst / split / c
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted((src / split / c).glob("*.jpg"))[:n]:
                shutil.copy(f, out / f.name)
    return dst


@pytest.fixture(scope="module")
def pbc_small(bloodmnist128, tmp_path_factory):
    if "tree" not in _CACHE:
        _CACHE["tree"] = small_tree(bloodmnist128, tmp_path_factory.mktemp("pbc_small"))
    return _CACHE["tree"]


@pytest.fixture(scope="module")
def base_model(pbc_small, tmp_path_factory):
    """A real 8-class Keras classifier (small CNN, 32 px, CLAHE contract), trained for one epoch."""
    from hemaedge.train.finetune import finetune

    if "base" not in _CACHE:
        out = tmp_path_factory.mktemp("base")
        finetune(tiny_config(pbc_small, out, epochs=1), log=lambda *_: None)
        _CACHE["base"] = out / "model.keras"
    return _CACHE["base"]


@pytest.fixture(scope="module")
def new_microscope(bloodmnist128, tmp_path_factory) -> Path:
    """'Another microscope': PBC test cells of four classes with a warmer stain and less light."""
    dst = tmp_path_factory.mktemp("new_scope")
    for c in ("eosinophil", "lymphocyte", "monocyte", "neutrophil"):
        (dst / c).mkdir()
        for f in sorted((bloodmnist128 / "test" / c).glob("*.jpg"))[:8]:
            img = cv2.imread(str(f)).astype(np.float32)
            img = np.clip(img * np.array([0.8, 0.9, 1.15]) - 10, 0, 255).astype(np.uint8)
            cv2.imwrite(str(dst / c / (f.stem + ".png")), img)
    return dst


def adapt(*args):
    return CliRunner().invoke(main, ["train", "adapt", *map(str, args)], catch_exceptions=False)


def test_adapt_from_a_tree_exports_a_bundle_with_provenance(base_model, pbc_small, new_microscope, tmp_path):
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle, sha256_file
    from hemaedge.edge.preprocess import prepare_batch

    out = tmp_path / "adapted"
    res = adapt("--base", base_model, "--data", new_microscope, "--replay", pbc_small, "--out", out,
                "--fit", "tail", "--epochs", "2", "--replay-min", "16", "--seed", "1")
    assert res.exit_code == 0, res.output
    result = json.loads((out / "adapt.json").read_text())
    p = result["provenance"]
    assert p["base"]["sha256"] == sha256_file(base_model)
    assert (p["training"]["fit"], p["training"]["replay_ratio"], p["training"]["distill"]) == ("tail", 2.0, 0.0)
    assert p["counts"]["new_cells"] == 32 and p["counts"]["new_train"] + p["counts"]["held_out"] == 32
    assert p["counts"]["replay"] >= 16 and p["data"][0]["per_class"]["monocyte"] == 8
    for when in ("accuracy_before", "accuracy_after"):
        assert set(p[when]) == {"held_out", "pbc_val"}
        assert p[when]["pbc_val"]["n"] == 32 and 0 <= p[when]["held_out"]["accuracy"] <= 1
    # the chosen epoch is the best held-out one (epoch 0 = the base model itself)
    hist = p["training"]["history"]
    assert p["training"]["chosen_epoch"] == max(hist, key=lambda h: (h["held_out_accuracy"], -h["held_out_loss"]))["epoch"]
    assert p["accuracy_after"]["held_out"]["accuracy"] == hist[p["training"]["chosen_epoch"]]["held_out_accuracy"]
    # the bundle: verified, int8, manifest records the provenance, runs in the device back end
    b = load_bundle(out / "bundle")
    assert b.manifest["model"]["format"] == "tflite-int8-mixed"
    assert b.manifest["adaptation"]["base"]["sha256"] == sha256_file(base_model)
    assert b.manifest["adaptation"]["accuracy_after"]["pbc_val"]["n"] == 32
    assert b.manifest["validation"]["status"] in ("passed", "failed-validation")
    crops = [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in sorted(new_microscope.rglob("*.png"))[:4]]
    probs = load_backend(b, threads=1).predict(prepare_batch(crops, b.contract))
    assert probs.shape == (4, 8) and np.allclose(probs.sum(1), 1, atol=1e-3)
    # the held-out cells were never trained on: only the trainable tail changed
    assert p["training"]["trainable_parameters"] < p["training"]["parameters"]
    # `hemaedge edge install` takes it like any bundle
    res = CliRunner().invoke(main, ["edge", "install", str(out / "bundle"), "--store", str(tmp_path / "store")])
    assert res.exit_code == 0, res.output


def test_adapt_from_a_reviewed_run_uses_only_reviewed_cells(base_model, sample_run, tmp_path):
    """The base here is 32 px: the run's 128 px crops are resized like any input."""
    from hemaedge.review.rundata import NOT_A_CELL, RunReview

    run = RunReview.open(sample_run)
    wbc = [c for c in run.cells if c.kind == "wbc"]
    for i, c in enumerate(wbc[:6]):
        run.correct(c.key, "lymphocyte" if i % 2 else "neutrophil")
    run.correct(run.cells[-1].key, NOT_A_CELL)
    out = tmp_path / "adapted"
    res = adapt("--base", base_model, "--data", sample_run, "--out", out, "--epochs", "1", "--no-export",
                "--holdout", "0.34")
    assert res.exit_code == 0, res.output
    p = json.loads((out / "adapt.json").read_text())["provenance"]
    assert p["counts"]["new_cells"] == 6 and p["counts"]["new_per_class"] == {"lymphocyte": 3, "neutrophil": 3}
    assert p["data"][0]["kind"] == "run" and p["data"][0]["corrections_sha256"]
    # the default recipe: the head fit, its own replay ratio and distillation share
    assert (p["training"]["fit"], p["training"]["replay_ratio"], p["training"]["distill"]) == ("head", 12.0, 0.5)
    assert p["training"]["max_old_drop"] == 0.005
    assert "no --replay" in res.output and not (out / "bundle").exists()


def test_adapt_refuses_what_it_cannot_do(base_model, new_microscope, tmp_path):
    from hemaedge.edge.defaults import packaged_default_bundle

    # the packaged default ships without its Keras source: --fit head adapts the bundle itself
    # (tests/test_train_adapt_bundle.py), --fit tail retrains backbone blocks and cannot
    res = CliRunner().invoke(main, ["train", "adapt", "--base", str(packaged_default_bundle()), "--data",
                                    str(new_microscope), "--out", str(tmp_path / "a"), "--fit", "tail"])
    assert res.exit_code == 2 and "Keras source" in res.output and "Traceback" not in res.output
    odd = tmp_path / "odd"
    shutil.copytree(new_microscope, odd)
    (odd / "lymphocyte").rename(odd / "smudge")
    res = CliRunner().invoke(main, ["train", "adapt", "--base", str(base_model), "--data", str(odd),
                                    "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "smudge" in res.output
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    res = CliRunner().invoke(main, ["train", "adapt", "--base", str(base_model), "--data", str(new_microscope),
                                    "--out", str(tmp_path / "c")])
    assert res.exit_code == 2 and "not empty" in res.output and (tmp_path / "c" / "keep.txt").read_text() == "mine"


def test_adapt_recipe_options_augment_and_draw_replay_afresh(base_model, pbc_small, new_microscope, tmp_path):
    """--augment robust (the fine-tuning recipe's camera stage around the contract's preprocessing)
    and --replay-pool: each epoch trains on --replay-ratio x new cells drawn from a bigger pool."""
    out = tmp_path / "adapted"
    res = adapt("--base", base_model, "--data", new_microscope, "--replay", pbc_small, "--out", out,
                "--fit", "tail", "--epochs", "2", "--replay-min", "8", "--replay-ratio", "0.5", "--replay-pool", "40",
                "--augment", "robust", "--new-weight", "0.7", "--no-export")
    assert res.exit_code == 0, res.output
    p = json.loads((out / "adapt.json").read_text())["provenance"]
    assert p["counts"]["replay"] == max(8, round(0.5 * p["counts"]["new_train"])) and p["counts"]["replay_pool"] == 40
    assert p["training"]["augment"] == "robust" and p["training"]["new_weight"] == 0.7
    assert len(p["training"]["history"]) == 3
    for bad in (["--new-weight", "1"], ["--augment", "sideways"]):
        res = adapt("--base", base_model, "--data", new_microscope, "--out", tmp_path / bad[0], "--fit", "tail", *bad)
        assert res.exit_code == 2 and "Traceback" not in res.output


def test_adapt_distill_balance_and_batchnorm_options(base_model, pbc_small, new_microscope, tmp_path):
    """--distill (replay targets partly the base's own answers), --balance, --bn mixed: recorded,
    and the BatchNorm statistics really are the new cells' (not the base's) after --bn."""
    import keras

    from hemaedge.export.source import load_source
    from hemaedge.train.adapt import batchnorm_layers

    out = tmp_path / "adapted"
    res = adapt("--base", base_model, "--data", new_microscope, "--replay", pbc_small, "--out", out,
                "--fit", "tail", "--epochs", "1", "--replay-min", "16", "--distill", "0.5", "--balance", "--bn", "mixed",
                "--no-export")
    assert res.exit_code == 0, res.output
    t = json.loads((out / "adapt.json").read_text())["provenance"]["training"]
    assert t["distill"] == 0.5 and t["balance"] is True and t["batchnorm"]["mode"] == "mixed"
    assert t["batchnorm"]["images"] == 2 * json.loads((out / "adapt.json").read_text())["provenance"]["counts"]["new_train"]

    # --epochs 0 --bn new: the label-free baseline, only the BatchNorm statistics change
    bn_only = tmp_path / "bn-only"
    res = adapt("--base", base_model, "--data", new_microscope, "--out", bn_only, "--fit", "tail", "--epochs", "0",
                "--bn", "new",
                "--no-export")
    assert res.exit_code == 0, res.output
    before, after = load_source(base_model).model, keras.saving.load_model(bn_only / "model.keras")
    bn_b, bn_a = batchnorm_layers(before), batchnorm_layers(after)
    assert bn_b and not np.allclose(bn_b[0].moving_mean.numpy(), bn_a[0].moving_mean.numpy())
    assert all(layer.momentum == bn_b[0].momentum for layer in bn_a)  # restored, not left at 0
    # every learned weight (kernels, biases, BatchNorm scale/offset) is the base's
    assert all(np.array_equal(wb.numpy(), wa.numpy()) for wb, wa in zip(before.weights, after.weights)
               if "moving" not in wb.path)
    for bad in (["--epochs", "0"], ["--distill", "1"]):
        res = adapt("--base", base_model, "--data", new_microscope, "--out", tmp_path / bad[1], "--fit", "tail", *bad)
        assert res.exit_code == 2 and "Traceback" not in res.output


def test_class_weights_even_out_classes_but_cap_a_rare_one():
    from hemaedge.train.sampling import capped_balance_weights as class_weights

    labels = np.array([0] * 60 + [1] * 30 + [2] * 1)
    w = class_weights(labels, cap=4.0)
    assert np.isclose(w.mean(), 1.0)
    assert np.isclose(w[labels == 0].sum(), w[labels == 1].sum(), rtol=1e-5)  # equal totals
    # the single cell of class 2 weighs 4x a cell at its share by count (91 / 3 uncapped), no more
    assert np.isclose(w[labels == 2][0] / w.mean(), 4.0 / np.mean([91 / 180] * 60 + [91 / 90] * 30 + [4.0]))
    assert w[labels == 2].sum() < w[labels == 0].sum()


def test_the_adapted_bundle_gets_its_own_temperature_and_ood_threshold(base_model, pbc_small, new_microscope,
                                                                        tmp_path):
    """Bug: the adapted model's manifest kept the base's `output.temperature` and `ood.threshold`,
    so the device called many right answers on the new microscope "unidentified". They are refitted
    on the adapted model's own answers on PBC val and the held-out new cells."""
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.confidence import ood_scores
    from hemaedge.export.source import read_sidecar
    from hemaedge.train.evaluate import apply_temperature

    base_side = read_sidecar(base_model)
    assert base_side.get("ood") and base_side.get("output", {}).get("temperature")
    out = tmp_path / "adapted"
    res = adapt("--base", base_model, "--data", new_microscope, "--replay", pbc_small, "--out", out,
                "--epochs", "2", "--replay-min", "16", "--seed", "2")
    assert res.exit_code == 0, res.output
    side = json.loads((out / "model.json").read_text())
    manifest = load_bundle(out / "bundle").manifest
    assert manifest["ood"] == side["ood"] and manifest["output"]["temperature"] == side["output"]["temperature"]
    assert side["ood"]["threshold"] != base_side["ood"]["threshold"]
    assert side["output"]["temperature_fitted_on"] == "held_out+pbc_val"
    per = side["ood"]["per_reference"]
    assert set(per) == {"held_out", "pbc_val"} and per["pbc_val"]["n"] == 32
    assert side["ood"]["threshold"] == max(v["threshold"] for v in per.values())
    assert side["ood"]["unidentified_threshold"] == max(v["unidentified_threshold"] for v in per.values())
    # the threshold is the 95th percentile of the adapted model's own right answers on that reference
    from hemaedge.export.source import load_source
    from hemaedge.train.adapt import open_reference, predict, reference_split

    src = load_source(out / "model.keras")
    cells = reference_split(open_reference(str(pbc_small), list(src.classes)), "val", list(src.classes),
                            src.contract.size, None, 2)
    p = apply_temperature(predict(src.model, cells, src.contract), side["output"]["temperature"])
    right = p.argmax(1) == cells.labels
    assert np.isclose(np.quantile(ood_scores(p)[right], 0.95), per["pbc_val"]["threshold"], atol=2e-3)


def test_few_held_out_cells_do_not_make_the_unidentified_level_stricter_than_pbc_vals():
    """Bug (issue #14): the adapted bundle took both OOD tiers from the reference with the larger
    review level. With 6 held-out new cells that is them, and their 99.5th percentile is merely
    their largest score, far below PBC val's: right answers on the new microscope (15 of 64 BCCD
    test cells after 25 cells) became *unidentified*. Each tier is now the larger over references."""
    from hemaedge.edge.confidence import ood_scores
    from hemaedge.edge.identify import OodRule
    from hemaedge.train.adapt import confidence_sections

    rng = np.random.default_rng(0)

    def answers(top: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Probabilities whose top class is the label, with top probability `top`, the rest spread."""
        p = np.tile(((1 - top) / 7)[:, None], (1, 8))
        p[np.arange(len(top)), labels] = top
        return p

    # PBC val as the adapted model sees it: mostly sure, a tail of unsure right answers, a few wrong
    pbc_top = np.concatenate([rng.uniform(0.97, 1.0, 380), rng.uniform(0.5, 0.9, 20), np.full(20, 0.6)])
    pbc_y = rng.integers(0, 8, len(pbc_top))
    pbc_p = answers(pbc_top, pbc_y)
    pbc_y[-20:] = (pbc_y[-20:] + 1) % 8  # the last 20 answers are wrong
    # six held-out new cells, all moderately sure (their review level is above PBC val's)
    held_top = np.array([0.93, 0.94, 0.95, 0.9, 0.96, 0.92])
    held_y = np.array([0, 1, 4, 5, 6, 6])
    sections = confidence_sections({"held_out": answers(held_top, held_y), "pbc_val": pbc_p},
                                   {"held_out": held_y, "pbc_val": pbc_y}, {"output": {"temperature": 1.0}})
    ood, per = sections["ood"], sections["ood"]["per_reference"]
    assert per["held_out"]["threshold"] > per["pbc_val"]["threshold"]  # the case of the bug
    assert per["held_out"]["unidentified_threshold"] < per["pbc_val"]["unidentified_threshold"]
    # six right answers are too few to set either level (test below): PBC val sets both
    assert ood["threshold"] == per["pbc_val"]["threshold"] and ood["fitted_on"] == "pbc_val"
    assert ood["unidentified_threshold"] == per["pbc_val"]["unidentified_threshold"]
    assert ood["unidentified_fitted_on"] == "pbc_val"
    # a new-microscope answer as sure as PBC val's unsure right answers is counted (flagged), not unidentified
    t = sections["output"]["temperature"]
    from hemaedge.train.evaluate import apply_temperature

    cell = apply_temperature(answers(np.array([0.85]), np.array([4])), t)
    score = float(ood_scores(cell)[0])
    rule = OodRule.from_bundle({"ood": ood})
    assert per["held_out"]["unidentified_threshold"] < score <= rule.threshold
    assert score > rule.flag_threshold  # still flagged for review


def test_held_out_cells_set_a_level_only_with_enough_right_answers_for_its_quantile():
    """Issue #14, open item: each OOD tier was the larger over the references however few right answers
    a reference had, so 19 held-out BCCD cells set a review level of 0.52, merely their least sure right
    answer, and most wrong answers on unseen new cells went unflagged. A reference now sets a level only
    with at least 1 / (1 - quantile) right answers (20 for the 95th percentile, 200 for the 99.5th): from
    there on at least one right answer lies above the level; otherwise PBC val sets it, and the manifest
    says which set gave each level and why."""
    from hemaedge.train.adapt import confidence_sections, min_right_answers

    assert (min_right_answers(0.95), min_right_answers(0.995)) == (20, 200)
    rng = np.random.default_rng(1)
    for n in (19, 20, 199, 200):  # the principle: below the minimum the nearest-rank level is the top score
        scores = rng.uniform(0, 1, n)
        q = 0.95 if n < 100 else 0.995
        is_top = np.quantile(scores, q, method="inverted_cdf") == scores.max()
        assert is_top == (n < min_right_answers(q))

    def answers(top: np.ndarray, labels: np.ndarray) -> np.ndarray:
        p = np.tile(((1 - top) / 7)[:, None], (1, 8))
        p[np.arange(len(top)), labels] = top
        return p

    pbc_top = np.concatenate([rng.uniform(0.97, 1.0, 400), rng.uniform(0.6, 0.9, 12), np.full(20, 0.6)])
    pbc_y = rng.integers(0, 8, len(pbc_top))
    pbc_p = answers(pbc_top, pbc_y)
    pbc_y[-20:] = (pbc_y[-20:] + 1) % 8  # 20 wrong answers (else the temperature fit sharpens everything to 0)
    for n_held, review_from in ((19, "pbc_val"), (25, "held_out")):
        held_top = rng.uniform(0.55, 0.9, n_held)  # all right, all less sure than PBC val: larger levels
        held_y = rng.integers(0, 8, n_held)
        ood = confidence_sections({"held_out": answers(held_top, held_y), "pbc_val": pbc_p},
                                  {"held_out": held_y, "pbc_val": pbc_y}, {"output": {}})["ood"]
        per = ood["per_reference"]
        assert per["held_out"]["threshold"] > per["pbc_val"]["threshold"]
        assert per["held_out"]["unidentified_threshold"] > per["pbc_val"]["unidentified_threshold"]
        assert ood["fitted_on"] == review_from and ood["threshold"] == per[review_from]["threshold"]
        # 200 right answers for the unidentified level: never the held-out cells here
        assert ood["unidentified_fitted_on"] == "pbc_val"
        assert ood["unidentified_threshold"] == per["pbc_val"]["unidentified_threshold"]
        choice = ood["level_choice"]
        assert choice["review"]["fitted_on"] == review_from and choice["review"]["minimum_right_answers"] == 20
        assert choice["review"]["right_answers"] == {"held_out": n_held, "pbc_val": len(pbc_y) - 20}
        assert choice["unidentified"]["minimum_right_answers"] == 200
        assert f"held_out ({n_held} right) left out" in choice["unidentified"]["why"]


def test_adapt_fit_head_changes_only_the_classifier_and_its_figures_are_the_models(base_model, pbc_small,
                                                                                   new_microscope, tmp_path):
    """--fit head: the classifier layer refitted on the frozen backbone's features (every flip/rotation
    of the new cells). The backbone's weights stay the base's; the held-out choice never ends below the
    base; the before/after figures, computed from features, are what the saved Keras model answers."""
    import keras

    from hemaedge.edge.bundle import load_bundle
    from hemaedge.export.source import load_source
    from hemaedge.train.adapt import accuracy, open_reference, reference_split

    out = tmp_path / "head"
    res = adapt("--base", base_model, "--data", new_microscope, "--replay", pbc_small, "--out", out,
                "--fit", "head", "--replay-min", "16", "--distill", "0.3", "--seed", "3")
    assert res.exit_code == 0, res.output
    p = json.loads((out / "adapt.json").read_text())["provenance"]
    t = p["training"]
    assert t["fit"] == "head" and t["views_per_new_cell"] == 8 and len(t["trained_layers"]) == 1
    assert p["accuracy_after"]["held_out"]["accuracy"] >= p["accuracy_before"]["held_out"]["accuracy"]
    assert p["accuracy_after"]["held_out"]["accuracy"] == t["held_out_accuracy"]
    assert t["trials"] and {tr["pull"] for tr in t["trials"]} >= {1.0, 0.001}
    before, after = load_source(base_model).model, keras.saving.load_model(out / "model.keras")
    same = [np.array_equal(wb.numpy(), wa.numpy()) for wb, wa in zip(before.weights, after.weights)]
    assert all(same[:-2])  # every backbone weight, BatchNorm statistics included
    if t["chosen_step"]:
        assert not all(same[-2:])  # a chosen step > 0 really changed the classifier
    # the reported PBC val figure is the saved model's own
    src = load_source(out / "model.keras")
    cells = reference_split(open_reference(str(pbc_small), list(src.classes)), "val", list(src.classes),
                            src.contract.size, None, 3)
    assert accuracy(src.model, cells, src.contract)["accuracy"] == p["accuracy_after"]["pbc_val"]["accuracy"]
    assert load_bundle(out / "bundle").manifest["adaptation"]["training"]["fit"] == "head"
    for bad in (["--bn", "new"], ["--augment", "robust"], ["--fit", "all"]):
        res = adapt("--base", base_model, "--data", new_microscope, "--out", tmp_path / bad[1], "--fit", "head", *bad)
        assert res.exit_code == 2 and "Traceback" not in res.output


def test_an_adapted_bundle_keeps_the_base_bundles_test_time_views(base_model, pbc_small, new_microscope, tmp_path):
    """Bug: adapting a bundle that runs test-time views (the packaged default: `inference.views =
    flips`) gave a bundle without them, so the device ran one view per cell and the OOD levels were
    set on one-view answers. The adapted bundle now declares the base's views; its held-out choice,
    before/after figures and OOD levels are of the view-averaged answers the device gives."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.confidence import ood_scores
    from hemaedge.edge.preprocess import prepare_batch
    from hemaedge.edge.tta import FLIPS, bundle_views, predict_views
    from hemaedge.export.pipeline import export_one
    from hemaedge.export.source import load_source
    from hemaedge.train.adapt import open_reference, reference_split
    from hemaedge.train.evaluate import apply_temperature

    # a base bundle declaring flips, its Keras source beside it (as ~/hemaedge-runs/.../bundle-int8-flips)
    home = tmp_path / "base"
    home.mkdir()
    for f in (base_model, base_model.with_suffix(".json")):
        shutil.copy(f, home / f.name)
    export_one("tflite-fp32", load_source(home / base_model.name), home / "bundle", log=lambda *_: None)
    manifest = json.loads((home / "bundle" / "manifest.json").read_text())
    manifest["inference"] = {"views": "flips"}  # what `ood_calibrate --views flips --write` sets
    (home / "bundle" / "manifest.json").write_text(json.dumps(manifest))

    out = tmp_path / "adapted"
    res = adapt("--base", home / "bundle", "--data", new_microscope, "--replay", pbc_small, "--out", out,
                "--replay-min", "16", "--seed", "4")
    assert res.exit_code == 0, res.output
    p = json.loads((out / "adapt.json").read_text())["provenance"]
    assert p["training"]["views"] == "flips"
    b = load_bundle(out / "bundle")
    assert b.manifest["inference"]["views"] == "flips" and b.manifest["ood"]["views"] == "flips"
    assert bundle_views(b.manifest) == ("flips", FLIPS)  # what `hemaedge edge run` runs
    # a TFLite bundle with --fit head is adapted from the bundle itself (train/adapt_bundle.py), even with
    # its Keras source beside it: the reported PBC val figure and OOD level are the adapted bundle's own
    # flips-averaged answers, through the device's back end
    assert not (out / "model.keras").exists() and p["base"]["sha256"] == b.manifest["export"]["base_model_sha256"]
    cells = reference_split(open_reference(str(pbc_small), b.classes), "val", b.classes, b.contract.size, None, 4)
    raw = {k: v for k, v in b.output.items() if k != "temperature"}
    backend = load_backend(load_bundle(out / "bundle"), threads=1)
    backend.output = raw  # the model's own probabilities, before the adapted temperature
    p_flips = predict_views(backend.predict, prepare_batch(cells.images, b.contract), FLIPS)
    assert round(float((p_flips.argmax(1) == cells.labels).mean()), 4) == p["accuracy_after"]["pbc_val"]["accuracy"]
    p_t = apply_temperature(p_flips, b.manifest["output"]["temperature"])
    right = p_t.argmax(1) == cells.labels
    assert np.isclose(np.quantile(ood_scores(p_t)[right], 0.95),
                      b.manifest["ood"]["per_reference"]["pbc_val"]["threshold"], atol=2e-3)

    # a series reads a finished adaptation back only if it ran with the same views ("auto" resolved);
    # one from before views were recorded ran one view
    from hemaedge.train.adapt import AdaptConfig
    from hemaedge.train.adapt_bccd import cached_result

    cfg = AdaptConfig(base=str(home / "bundle"), data=[str(new_microscope)], out=str(out), replay=str(pbc_small),
                      replay_min=16, seed=4)
    assert cached_result(out, cfg)["provenance"]["training"]["views"] == "flips"
    with pytest.raises(SystemExit, match="views"):
        cached_result(out, AdaptConfig(**{**cfg.__dict__, "views": "off"}))
    old = json.loads((out / "adapt.json").read_text())
    del old["provenance"]["training"]["views"]
    (out / "adapt.json").write_text(json.dumps(old))
    with pytest.raises(SystemExit, match="views"):
        cached_result(out, cfg)

    # --views off: one view, declared as such
    res = adapt("--base", home / "bundle", "--data", new_microscope, "--replay", pbc_small, "--out", tmp_path / "off",
                "--replay-min", "16", "--seed", "4", "--views", "off")
    assert res.exit_code == 0, res.output
    side = load_bundle(tmp_path / "off" / "bundle").manifest
    assert side["inference"]["views"] == "off" and side["ood"]["views"] == "off"

    # the Keras path stays for --fit tail (its Keras source lies beside the bundle)
    res = adapt("--base", home / "bundle", "--data", new_microscope, "--replay", pbc_small, "--out", tmp_path / "tail",
                "--replay-min", "16", "--seed", "4", "--fit", "tail", "--epochs", "1", "--no-export")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "tail" / "model.keras").is_file()
    assert json.loads((tmp_path / "tail" / "model.json").read_text())["inference"]["views"] == "flips"


def test_a_fit_that_forgets_the_old_microscope_is_not_chosen():
    """--max-old-drop: new cells whose labels contradict the old microscope's (class 1 where the
    old images say 0) pull the classifier away from it; without the watch the fit that fits the
    held-out new cells best is chosen and loses old images, with it no fit losing more than the
    allowed share qualifies (the base always does)."""
    from hemaedge.train.adapt_head import OldMicroscopeWatch, fit_head, probabilities

    rng = np.random.default_rng(0)
    f = 16
    w0 = np.zeros((f, 2), np.float32)
    w0[0, 0], w0[0, 1] = 1.0, -1.0  # feature 0 > 0: class 0
    b0 = np.zeros(2, np.float32)
    old_x = rng.normal(0, 1, (400, f)).astype(np.float32)
    old_y = (old_x[:, 0] < 0).astype(np.int64)
    new_x = rng.normal(0, 1, (60, f)).astype(np.float32)
    new_x[:, 0] = np.abs(new_x[:, 0])  # the old rule says class 0 for every new cell ...
    new_y = np.ones(60, np.int64)  # ... and the new microscope's labels say class 1
    held_x, held_y = new_x[:20], new_y[:20]
    targets = np.eye(2, dtype=np.float32)[new_y[20:]]

    def run(old):
        return fit_head(new_x[20:], targets, np.ones(40, np.float32), w0, b0, held_x, held_y, logf=lambda m: None,
                        pulls=(0.001,), steps=100, old=old)

    def old_accuracy(fit):
        return float((probabilities(old_x, fit["w"], fit["b"]).argmax(1) == old_y).mean())

    base_old = float((probabilities(old_x, w0, b0).argmax(1) == old_y).mean())
    free = run(None)
    assert free["held_out_accuracy"] > free["base_held_out_accuracy"] and old_accuracy(free) < base_old - 0.05
    assert "old_microscope" not in free
    watched = run((old_x, old_y, 0.01))
    assert old_accuracy(watched) >= base_old - 0.01
    assert watched["old_microscope"] == {"base_accuracy": round(base_old, 4),
                                    "chosen_accuracy": round(old_accuracy(watched), 4), "max_drop": 0.01}
    assert all("old_check_accuracy" in t for t in watched["trials"])
    watch = OldMicroscopeWatch.start(0.9, 0.005)
    assert watch.allows(0.895) and not watch.allows(0.894) and watch.allows(None)
    assert OldMicroscopeWatch.start(None, 0.005).allows(0.0)  # nothing to watch: inactive


def test_adapt_watches_the_old_microscope_on_replay_images_it_never_trains_on(base_model, bloodmnist128, new_microscope,
                                                                             tmp_path):
    out = tmp_path / "watched"
    res = adapt("--base", base_model, "--data", new_microscope, "--replay", bloodmnist128, "--out", out,
                "--fit", "head", "--replay-min", "16", "--replay-ratio", "1", "--max-old-drop", "0",
                "--old-check", "40", "--eval-limit", "5", "--seed", "2", "--no-export")
    assert res.exit_code == 0, res.output
    t = json.loads((out / "adapt.json").read_text())["provenance"]["training"]
    assert t["max_old_drop"] == 0 and t["old_microscope"]["chosen_accuracy"] >= t["old_microscope"]["base_accuracy"]
    assert "old microscope watched on 40" in res.output
    res = adapt("--base", base_model, "--data", new_microscope, "--out", tmp_path / "bad", "--fit", "head",
                "--replay", bloodmnist128, "--max-old-drop", "1.5")
    assert res.exit_code == 2 and "Traceback" not in res.output and "--max-old-drop" in res.output
    # the default: watched at 0.5 pt with --fit head; 1 = not watched
    from hemaedge.train.adapt import AdaptConfig

    assert AdaptConfig("b", ["d"], "o", fit="head").resolved().max_old_drop == 0.005
    assert AdaptConfig("b", ["d"], "o", fit="tail").resolved().max_old_drop == 1.0
    out = tmp_path / "unwatched"
    res = adapt("--base", base_model, "--data", new_microscope, "--replay", bloodmnist128, "--out", out,
                "--fit", "head", "--replay-min", "16", "--replay-ratio", "1", "--max-old-drop", "1",
                "--eval-limit", "5", "--seed", "2", "--no-export")
    assert res.exit_code == 0, res.output
    assert "old_microscope" not in json.loads((out / "adapt.json").read_text())["provenance"]["training"]
