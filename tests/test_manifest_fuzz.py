"""Property-based fuzzing of manifests and store.json (issue 16: "a property-based or fuzz test
over manifests and store.json finds no traceback within a bounded run").

Each example mutates the packaged default manifest (or a real store.json) at random places
with random JSON values. The only exceptions allowed are HemaedgeError subclasses (which the
CLI prints as one `Error:` line); whatever the schema accepts must also preprocess a frame
without a native crash. The run is bounded (a few seconds) in the default suite; set
HEMAEDGE_FUZZ_EXAMPLES=N to explore N random examples (e.g. 20000 for a long run).
"""
from __future__ import annotations

import copy
import json
import os
import shutil

import numpy as np
import pytest

from hypothesis import HealthCheck, given, settings  # noqa: E402  (dev extra: a missing one fails)
from hypothesis import strategies as st  # noqa: E402

from hemaedge.edge.bundle import load_bundle, read_manifest  # noqa: E402
from hemaedge.edge.defaults import packaged_default_bundle  # noqa: E402
from hemaedge.edge.errors import HemaedgeError  # noqa: E402
from hemaedge.edge.manifest import Manifest  # noqa: E402
from hemaedge.edge.preprocess import prepare_batch  # noqa: E402
from hemaedge.edge.store import ModelStore  # noqa: E402
from store_helpers import make_bundle  # noqa: E402

EXAMPLES = int(os.environ.get("HEMAEDGE_FUZZ_EXAMPLES", "300"))


def _fuzz(share: float = 1.0):
    """Bounded and reproducible in the default run; HEMAEDGE_FUZZ_EXAMPLES=N explores N random examples."""
    return settings(max_examples=max(10, int(EXAMPLES * share)), deadline=None,
                    derandomize=not os.environ.get("HEMAEDGE_FUZZ_EXAMPLES"),
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
DEFAULT = read_manifest(packaged_default_bundle())

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.sampled_from([0, 1, -1, 8, 64, 65, 1024, 1025, 100000, 128.7, "128", "", "..", "../x",
                                     "/etc/passwd", "model.tflite", "a" * 300, "0" * 64, "tflite", "onnx",
                                     "probabilities", "logits", "uint8", "int8", "float32", "clahe"]),
                    st.text(max_size=12))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=8)


def _paths(node, prefix=()):
    """Every (container, key) path in a JSON tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield prefix + (i,)
            yield from _paths(v, prefix + (i,))


# the parts of the manifest a device reads (metrics' deep tree is mostly left alone)
_HOT = [p for p in _paths(DEFAULT) if p[0] in ("model", "classes", "input", "output", "files", "format",
                                               "manifest_version", "name", "validation", "signature")
        or len(p) <= 2]


def _mutate(doc, path, value, delete: bool):
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    if delete and isinstance(node, dict):
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return doc


mutations = st.lists(st.tuples(st.sampled_from(_HOT), json_values, st.booleans()), min_size=1, max_size=4)


def _apply(doc, muts):
    for path, value, delete in muts:
        try:
            doc = _mutate(doc, path, value, delete)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or retyped the parent
    return doc


@_fuzz()
@given(muts=mutations, extra=st.dictionaries(st.text(max_size=8), json_values, max_size=2))
def test_fuzzed_manifest_is_accepted_or_refused_cleanly(muts, extra):
    doc = _apply(DEFAULT, muts)
    if isinstance(doc, dict):
        doc.update({k: v for k, v in extra.items() if k not in DEFAULT})
    try:
        m = Manifest.from_dict(doc)
    except HemaedgeError:
        return
    assert m.to_dict() == doc  # round trip, unknown sections kept
    # what the schema accepts must preprocess a frame without a native crash or huge allocation
    frame = np.full((48, 64, 3), 120, np.uint8)
    try:
        batch = prepare_batch([frame], m.contract)
    except HemaedgeError:
        return
    assert batch.shape == (1, m.contract.size, m.contract.size, 3)


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return make_bundle(tmp_path_factory.mktemp("fuzz"), "fuzz", classes=["a", "b", "c"], size=32)


@_fuzz(0.5)  # writes a bundle folder per example
@given(muts=mutations)
def test_fuzzed_manifest_file_loads_or_fails_cleanly(bundle_dir, tmp_path_factory, muts):
    original = read_manifest(bundle_dir)
    hot = [m for m in muts if m[0][0] in original]
    doc = _apply(original, hot)
    target = tmp_path_factory.mktemp("b")
    shutil.copytree(bundle_dir, target, dirs_exist_ok=True)
    text = json.dumps(doc) if not isinstance(doc, float) or np.isfinite(doc) else "null"
    (target / "manifest.json").write_text(text)
    try:
        load_bundle(target)
    except HemaedgeError:
        pass


@pytest.fixture(scope="module")
def store_state(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    store = ModelStore(root / "store")
    for name in ("one", "two"):
        store.install(make_bundle(root / "b", name, classes=["a", "b", "c"], size=32), check_backend=False)
    return store.root, json.loads(store.state_path.read_text())


@_fuzz(0.5)  # copies a store per example
@given(data=st.data())
def test_fuzzed_store_json_is_refused_or_used_cleanly(store_state, tmp_path_factory, data):
    root, state = store_state
    paths = list(_paths(state))
    muts = data.draw(st.lists(st.tuples(st.sampled_from(paths), json_values, st.booleans()), min_size=1, max_size=4))
    doc = _apply(state, muts)
    copy_root = tmp_path_factory.mktemp("s") / "store"
    shutil.copytree(root, copy_root)
    (copy_root / "store.json").write_text(json.dumps(doc, allow_nan=True))
    store = ModelStore(copy_root)
    outside = copy_root.parent / "outside"
    outside.mkdir()
    for action in (store.list_versions, store.active_path, lambda: store.prune(1), store.rollback):
        try:
            action()
        except HemaedgeError:
            pass
    assert outside.is_dir()  # nothing outside the store was touched
