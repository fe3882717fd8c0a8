"""Is a verified bundle actually runnable here? Load it in its back end and run a smoke inference.

Checksums prove a bundle arrived as it was written, not that it can run: a truncated model
re-hashed by hand, a class list longer than the model's outputs, a wrong input size, dtype or
back end all pass checksums and fail at every `edge run`. `check_runnable` is the one check
that `edge verify`, `edge install` (before switching the active version), `edge models --verify`
and the exporters run: it loads the model, feeds it a few synthetic crops through the device's
own preprocessing and checks the output (one finite score per class; a model declared to give
"probabilities" must give rows of non-negative numbers summing to 1).
"""
from __future__ import annotations

import logging

import numpy as np

from hemaedge.edge.errors import BundleError, HemaedgeError

log = logging.getLogger(__name__)

# quantized outputs round each probability (uint8: steps of 1/256), so the sum may be off a little
PROBABILITY_SUM_TOLERANCE = 0.05


def smoke_images(size: int) -> list[np.ndarray]:
    """A few deterministic crops that exercise the preprocessing: grey, black, white, noise, a gradient."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    gradient = np.stack([np.tile(ramp, (size, 1)), np.tile(ramp[:, None], (1, size)),
                         np.full((size, size), 160.0, np.float32)], axis=-1).astype(np.uint8)
    return [np.full((size, size, 3), 200, np.uint8), np.zeros((size, size, 3), np.uint8),
            np.full((size, size, 3), 255, np.uint8), rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            gradient]


def check_runnable(bundle, threads: int = 1) -> str:
    """Load `bundle` (a Bundle) and run the smoke inference; returns the runtime's description.

    Raises BundleError (BackendError for a model that cannot load or does not match) with a
    message that names the bundle and what is wrong."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.preprocess import prepare_batch

    where = getattr(bundle, "root", "the bundle")
    try:
        backend = load_backend(bundle, threads=threads)
        images = smoke_images(bundle.contract.size)
        probs = np.asarray(backend.predict(prepare_batch(images, bundle.contract)))
    except HemaedgeError:
        raise
    except Exception as exc:  # a runtime's own error on a broken model: the bundle cannot run
        raise BundleError(f"{where}: the model does not run ({type(exc).__name__}: {str(exc)[:300]}); "
                          "re-export the bundle") from None
    n, k = len(images), len(bundle.classes)
    if probs.shape != (n, k):
        raise BundleError(f"{where}: the model gives output of shape {probs.shape} for {n} crops, "
                          f"expected ({n}, {k}) for the {k} classes the manifest lists")
    if not np.all(np.isfinite(probs)):
        raise BundleError(f"{where}: the model gives non-finite scores (NaN or infinity) on plain test crops")
    kind = (bundle.output or {}).get("kind", "probabilities")
    if kind == "probabilities":
        sums = probs.sum(axis=1)
        if probs.min() < -1e-3 or np.abs(sums - 1.0).max() > PROBABILITY_SUM_TOLERANCE:
            raise BundleError(f"{where}: the manifest says the model gives probabilities, but its outputs are not "
                              f"(row sums {np.round(sums, 3).tolist()}, smallest value {probs.min():.3g}); "
                              "declare output kind 'logits' or re-export the bundle")
    runtime = getattr(backend, "runtime", backend.name)
    log.debug("%s: smoke inference passed in %s", where, runtime)
    return runtime
