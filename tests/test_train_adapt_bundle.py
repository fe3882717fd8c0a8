"""`train adapt --fit head` from a TFLite bundle alone (issue #14): the real packaged default, which
ships without its Keras source, on real BloodMNIST and BCCD cells."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from hemaedge.cli import main
from hemaedge.edge.defaults import packaged_default_bundle

WHITE = ("eosinophil", "lymphocyte", "monocyte", "neutrophil")


def bccd_cells(bccd: Path, split: str, per_class: int) -> dict[str, list[np.ndarray]]:
    """The annotated white cell of single-label BCCD frames, cropped square around its box, 128 px."""
    from hemaedge.benchmarks.tools.segmentation_bccd import read_voc
    from hemaedge.edge.preprocess import read_image_rgb, resize
    from hemaedge.train.adapt_bccd import single_label_frames

    out: dict[str, list] = {c: [] for c in WHITE}
    for frame, label in sorted(single_label_frames(bccd, split).items()):
        if label not in out or len(out[label]) >= per_class:
            continue
        x0, y0, x1, y1 = read_voc(bccd / "Annotations" / f"{frame}.xml")["WBC"][0]
        img = read_image_rgb(bccd / "JPEGImages" / f"{frame}.jpg")
        half, cx, cy = max(x1 - x0, y1 - y0) // 2 + 4, (x0 + x1) // 2, (y0 + y1) // 2
        crop = img[max(0, cy - half):cy + half, max(0, cx - half):cx + half]
        out[label].append(resize(crop, 128))
    return out


@pytest.fixture(scope="module")
def real_cells(bloodmnist128, bccd) -> np.ndarray:
    """16 BloodMNIST val cells (two per class) and 8 BCCD white cells, uint8 RGB 128 px."""
    from hemaedge.edge.preprocess import read_image_rgb, resize

    pbc = [resize(read_image_rgb(p), 128) for c in sorted(p.name for p in (bloodmnist128 / "val").iterdir())
           for p in sorted((bloodmnist128 / "val" / c).glob("*.jpg"))[:2]]
    scope = [im for ims in bccd_cells(bccd, "train", 2).values() for im in ims]
    return np.stack(pbc + scope)


def test_the_packaged_defaults_answer_is_softmax_of_its_features_and_a_patched_head_is_what_runs(real_cells,
                                                                                                 tmp_path):
    """The features are the input of the default's float classifier layer as its own int8 model computes
    them; softmax(f @ W0 + b0) is the model's answer; a patched model.tflite answers softmax(f @ W + b) for
    the new head and differs from the base only inside the classifier's weight and bias buffers."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle, write_bundle
    from hemaedge.edge.preprocess import output_probabilities, prepare_batch, softmax
    from hemaedge.train.adapt_bundle import BundleHead, classifier_end, patched_model

    base = BundleHead(packaged_default_bundle())
    assert base.w0.shape == (1280, 8) and base.b0.shape == (8,)
    x = prepare_batch(real_cells, base.contract)
    f = base.predict(x)
    assert f.shape == (len(x), 1280)
    device = load_backend(load_bundle(packaged_default_bundle()), threads=2).predict(x)  # the device's own answer
    mine = output_probabilities(softmax(f @ base.w0 + base.b0), base.bundle.output)
    assert np.abs(mine - device).max() < 1e-5
    assert (mine.argmax(1) == device.argmax(1)).all()

    rng = np.random.default_rng(0)
    w = base.w0 + rng.normal(0, 0.05, base.w0.shape).astype(np.float32)
    b = base.b0 + rng.normal(0, 0.5, 8).astype(np.float32)
    data = patched_model(base.data, base.end, w, b)
    changed = np.flatnonzero(np.frombuffer(data, np.uint8) != np.frombuffer(base.data, np.uint8))
    spans = [(base.end.weight_at, base.end.weight_at + w.nbytes), (base.end.bias_at, base.end.bias_at + b.nbytes)]
    assert len(changed) and all(any(lo <= i < hi for lo, hi in spans) for i in changed)
    (tmp_path / "model.tflite").write_bytes(data)
    staged = write_bundle(tmp_path / "patched", {"model.tflite": tmp_path / "model.tflite"}, model_file="model.tflite",
                          backend="tflite", model_format="tflite-int8-mixed", classes=base.classes,
                          contract=base.contract, output={"kind": "probabilities"}, name="patched")
    p = load_backend(load_bundle(staged), threads=2).predict(x)
    assert np.abs(p - softmax(f @ w + b)).max() < 1e-5
    assert not np.allclose(p, softmax(f @ base.w0 + base.b0), atol=1e-3)  # the new head really runs

    # a classifier whose bytes are not a unique match in the file is refused, not guessed at
    doubled = base.data + base.w0.T.astype(np.float32).tobytes()
    with pytest.raises(Exception, match="more than once"):
        classifier_end(doubled)


def test_adapting_the_packaged_default_from_the_bundle_alone_gives_a_bundle_the_device_runs(bccd, bloodmnist128,
                                                                                          tmp_path):
    """Issue #14: the packaged default ships without its Keras source and could not be adapted. Now
    `--fit head` adapts the bundle itself: the adapted bundle verifies, installs, `edge run` uses it, and the
    figures `train adapt` reports are that bundle's own answers. `--fit tail` says what it needs."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.bundle import load_bundle
    from hemaedge.edge.preprocess import prepare_batch
    from hemaedge.edge.tta import FLIPS, predict_views
    from test_train_adapt import small_tree

    pbc = small_tree(bloodmnist128, tmp_path / "pbc", (("train", 6), ("val", 3), ("test", 1)))
    cells = tmp_path / "bccd_cells"
    for c, ims in bccd_cells(bccd, "train", 5).items():
        (cells / c).mkdir(parents=True)
        for i, im in enumerate(ims):
            cv2.imwrite(str(cells / c / f"{i}.png"), im[:, :, ::-1])
    base = tmp_path / "default"  # a copy: the packaged folder as a user has it, no Keras file anywhere near
    shutil.copytree(packaged_default_bundle(), base)
    out = tmp_path / "adapted"
    cli = CliRunner()
    r = cli.invoke(main, ["train", "adapt", "--base", str(base), "--data", str(cells), "--replay", str(pbc),
                          "--replay-min", "16", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads((out / "adapt.json").read_text())
    p = res["provenance"]
    assert not (out / "model.keras").exists()
    assert p["base"]["sha256"] == load_bundle(base).manifest["files"]["model.tflite"]["sha256"]
    assert p["base"]["bundle_manifest_sha256"] and p["training"]["fit"] == "head"
    assert p["accuracy_after"]["held_out"]["accuracy"] >= p["accuracy_before"]["held_out"]["accuracy"]
    adapted = load_bundle(out / "bundle")
    m = adapted.manifest
    assert m["validation"]["status"] == "passed" and res["bundle"]["max_abs_prob_diff"] < 1e-4
    assert m["inference"]["views"] == "flips" and m["ood"]["views"] == "flips"
    assert m["adaptation"]["base"]["bundle"] == str(base) and "signature" not in m
    assert m["output"]["temperature"] != load_bundle(base).manifest["output"]["temperature"]
    assert set(m["ood"]["level_choice"]) == {"review", "unidentified"}

    # the reported PBC val figure is the adapted bundle's own flips-averaged answer through the device path
    from hemaedge.train.adapt import open_reference, reference_split

    val = reference_split(open_reference(str(pbc), adapted.classes), "val", adapted.classes, 128, None, 0)
    probs = predict_views(load_backend(adapted, threads=2).predict, prepare_batch(val.images, adapted.contract), FLIPS)
    assert round(float((probs.argmax(1) == val.labels).mean()), 4) == p["accuracy_after"]["pbc_val"]["accuracy"]

    for args in (["edge", "verify", str(out / "bundle")],
                 ["edge", "install", str(out / "bundle"), "--store", str(tmp_path / "store")]):
        r = cli.invoke(main, args, catch_exceptions=False)
        assert r.exit_code == 0, r.output
    r = cli.invoke(main, ["edge", "install", str(out / "bundle"), "--store", str(tmp_path / "signed-only"),
                          "--require-signature"], catch_exceptions=False)
    assert r.exit_code != 0  # unsigned: a store that requires signatures keeps its rule

    frames = tmp_path / "frames"
    frames.mkdir()
    for f in ("BloodImage_00001", "BloodImage_00003"):
        shutil.copy(bccd / "JPEGImages" / f"{f}.jpg", frames)
    r = cli.invoke(main, ["edge", "run", "--source", str(frames), "--bundle", str(out / "bundle"), "--out",
                          str(tmp_path / "run"), "-q"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["model"]["name"] == m["name"] and summary["cells"] > 0

    # --fit tail retrains backbone blocks: it needs the Keras source, and says so
    r = cli.invoke(main, ["train", "adapt", "--base", str(base), "--data", str(cells), "--out", str(tmp_path / "t"),
                          "--fit", "tail"])
    assert r.exit_code == 2 and "Traceback" not in r.output
    assert "Keras source" in r.output and "--fit head" in r.output
