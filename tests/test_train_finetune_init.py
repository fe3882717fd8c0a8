"""`train finetune --init`: a run that starts from a fine-tuned model's weights, at another input size
(progressive resizing, issue 15: the 64 px red-cell model continued at 80 px)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("keras")

from finetune_helpers import tiny_config, tiny_runs, tree3  # noqa: E402,F401


def test_init_carries_the_weights_to_a_larger_input(tiny_runs, tree3, tmp_path):
    import keras

    from hemaedge.train.finetune import finetune, init_from

    src = Path(tiny_runs[0].out) / "model.keras"  # trained at 32 px
    cfg = tiny_config(tree3, tmp_path / "at48", size=48, epochs=1, bootstrap=0, init=str(src))
    classes = json.loads(src.with_suffix(".json").read_text())["classes"]
    model, desc = init_from(cfg, classes)
    ref = keras.models.load_model(src, compile=False)
    assert model.input_shape[1:3] == (48, 48)
    for a, b in zip(model.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert "then fine-tuned as" in desc and "(32 px)" in desc
    # the carried weights run at the larger size
    img = np.random.default_rng(0).uniform(0, 255, (1, 48, 48, 3)).astype(np.float32)
    assert model.predict(img, verbose=0).shape == (1, len(classes))

    finetune(cfg, log=lambda *_: None)
    side = json.loads((Path(cfg.out) / "model.json").read_text())
    assert side["input"]["size"] == 48 and "then fine-tuned as" in side["weights"]
    state = json.loads((Path(cfg.out) / "state.json").read_text())
    assert state["config"]["init"] == str(src)


def test_init_refuses_a_model_of_other_classes_or_without_sidecar(tiny_runs, tree3, tmp_path):
    from hemaedge.train.finetune import FinetuneError, finetune

    src = Path(tiny_runs[0].out) / "model.keras"
    lone = tmp_path / "lone" / "model.keras"
    lone.parent.mkdir()
    shutil.copy(src, lone)
    with pytest.raises(FinetuneError, match="sidecar model.json is missing"):
        finetune(tiny_config(tree3, tmp_path / "a", init=str(lone)), log=lambda *_: None)
    side = json.loads(src.with_suffix(".json").read_text())
    side["classes"] = ["a", "b", "c"]
    lone.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(FinetuneError, match="classes .* differ"):
        finetune(tiny_config(tree3, tmp_path / "b", init=str(lone)), log=lambda *_: None)
    with pytest.raises(FinetuneError, match="no such .keras model"):
        finetune(tiny_config(tree3, tmp_path / "c", init=str(tmp_path / "missing.keras")), log=lambda *_: None)
