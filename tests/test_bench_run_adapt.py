"""The per-run adaptation study (benchmarks/tools/run_adapt_study.py) on real BloodMNIST val cells
and the packaged default's own int8 features: its 'none' is the device's answer, alignment is a
no-op on training-like runs, EM finds a run's class shift, the online scale rule is what it says."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hemaedge.benchmarks.tools import run_adapt_study as st
from hemaedge.edge.preprocess import prepare_batch, read_image_rgb

DEFAULT = Path(__file__).resolve().parents[1] / "src" / "hemaedge" / "models" / "default"
PER_CLASS = 12


@pytest.fixture(scope="module")
def cells(bloodmnist128):
    from hemaedge.edge.tta import FLIPS
    from hemaedge.train.adapt_bundle import BundleHead
    from hemaedge.train.adapt_head import view_features

    head = BundleHead(DEFAULT, threads=2)
    files = [f for c in head.classes for f in sorted((bloodmnist128 / "val" / c).glob("*.jpg"))[:PER_CLASS]]
    images = [read_image_rgb(f) for f in files]
    feats = view_features(head, images, head.contract, FLIPS)
    return head, images, feats, [f.parent.name for f in files]


def test_the_study_answers_as_the_device_does_without_adaptation(cells):
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.tta import FLIPS, predict_views

    head, images, feats, _ = cells
    be = load_backend(head.bundle, threads=2)
    device = predict_views(be.predict, prepare_batch(images, head.contract), FLIPS)
    mine = st.adapt("none", {1.0: feats}, {"prior": None}, head.w0, head.b0, head.bundle.output["temperature"])
    np.testing.assert_allclose(mine, device, atol=2e-4)


def test_alignment_to_the_run_s_own_statistics_changes_nothing(cells):
    head, _, feats, labels = cells
    stats = st.training_stats(feats, labels, head.classes)  # the run is its own "training set"
    t = head.bundle.output["temperature"]
    for method in ("align", "align mean", "prior-aware align"):
        p = st.adapt(method, {1.0: feats}, stats, head.w0, head.b0, t)
        q = st.adapt("none", {1.0: feats}, stats, head.w0, head.b0, t)
        assert (p.argmax(1) == q.argmax(1)).mean() > 0.97, method


def test_em_finds_a_run_of_mostly_neutrophils(cells):
    head, _, feats, labels = cells
    stats = st.training_stats(feats, labels, head.classes)
    p = st.probs(feats, head.w0, head.b0, head.bundle.output["temperature"])
    neut = head.classes.index("neutrophil")
    lab = np.array([head.classes.index(y) for y in labels])
    run = np.concatenate([np.flatnonzero(lab == neut), np.flatnonzero(lab != neut)[::8]])
    prior, q = st.em_prior(p[run], stats["prior"])
    share = (lab[run] == neut).mean()  # about half the run, against an eighth in the "training" cells
    assert abs(prior[neut] - share) < 0.1 and share > 3 * stats["prior"][neut]
    np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-6)


def test_the_online_scale_rule_answers_at_the_leader_and_then_holds_it(cells):
    head, _, feats, _ = cells
    t = head.bundle.output["temperature"]
    rng = np.random.default_rng(0)
    by_scale = {1.0: feats, 0.9: feats[:, rng.permutation(feats.shape[1])]}  # another "scale": other cells' features
    ps = {s: st.probs(f, head.w0, head.b0, t) for s, f in by_scale.items()}
    out = st.online_scale(by_scale, head.w0, head.b0, t, fix_after=5)
    lead = max(ps, key=lambda s: (ps[s][:5].max(1).sum(), s == 1.0))
    np.testing.assert_allclose(out[5:], ps[lead][5:])  # fixed after the 5th cell
    first = max(ps, key=lambda s: (ps[s][0].max(), s == 1.0))
    np.testing.assert_allclose(out[0], ps[first][0])
