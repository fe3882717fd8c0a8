"""`train adapt --fit head`: refit only the classifier layer on the frozen backbone's features.

The base model is `backbone -> (dropout) -> Dense softmax`. Its backbone turns each cell into a
feature vector once; every flip / right-angle rotation of each new training cell is one more
vector (a cell has no orientation), so the features are computed once and the layer is fitted in
seconds, however many passes. The fit starts at the base's weights and is pulled back toward them
(an L2 penalty on the change, "stay near the base unless the new cells say otherwise"); the
replay sample keeps the old microscope's cells in the loss. The pull and the number of steps are
chosen on the held-out new cells. The backbone is untouched, so the exported model has exactly
the base's architecture and the old microscope's features; only 1280 x classes + classes numbers
change. Held-out, PBC val and test cells are scored from their features too (the model's output
is softmax(features @ W + b) exactly: dropout is off at inference).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from hemaedge.edge.errors import UsageError
from hemaedge.edge.preprocess import prepare_batch, softmax

log = logging.getLogger(__name__)

# Pulls toward the base's weights (per unit of mean loss) tried on the held-out cells, strongest
# first: ties go to the model closest to the base (least drift on the old microscope).
PULLS = (1.0, 0.1, 0.01, 0.001)
STEPS = 400           # full-batch Adam steps per pull; checkpoints every CHECK steps
CHECK = 25
HEAD_LR = 1e-3


def classifier_layer(model):
    """The model's final Dense softmax layer and a model giving its input (the features)."""
    import keras

    last = model.layers[-1]
    act = getattr(getattr(last, "activation", None), "__name__", "")
    if not isinstance(last, keras.layers.Dense) or act != "softmax":
        raise UsageError(f"--fit head needs a model whose last layer is a Dense softmax classifier "
                         f"(this one ends in {type(last).__name__} {last.name!r}); use --fit tail")
    return last, keras.Model(model.inputs, last.input)


def dihedral_views(images: np.ndarray) -> np.ndarray:
    """All 8 flips / right-angle rotations of each image, view-major: (8 * N, S, S, 3)."""
    views = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    views += [v[:, :, ::-1] for v in views]
    return np.ascontiguousarray(np.concatenate(views))


def features(extractor, images: np.ndarray, contract, batch_size: int = 64) -> np.ndarray:
    """(N, F): the backbone's features of every image, one view."""
    return view_features(extractor, images, contract, (0,), batch_size)[0]


def view_features(extractor, images: np.ndarray, contract, views=(0,), batch_size: int = 64) -> np.ndarray:
    """(len(views), N, F): the features of each test-time view (edge.tta) of every image, the views
    taken of the prepared tensor exactly as the device takes them."""
    from hemaedge.edge.tta import dihedral_view

    out = [[] for _ in views]
    for s in range(0, len(images), batch_size):
        x = prepare_batch(images[s:s + batch_size], contract)
        for i, k in enumerate(views):
            out[i].append(np.asarray(extractor.predict(np.ascontiguousarray(dihedral_view(x, k, axes=(1, 2))),
                                                       verbose=0)))
    if not len(images):
        return np.zeros((len(views), 0, 0), np.float32)
    return np.stack([np.concatenate(o) for o in out]).astype(np.float32)


def view_probabilities(feats: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The device's answer: probabilities averaged over the views (feats (V, N, F) or one view (N, F))."""
    feats = feats[None] if feats.ndim == 2 else feats
    return np.mean([probabilities(f, w, b) for f in feats], axis=0)


def probabilities(feats: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    return softmax(feats @ w + b)


def _score(p: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    acc = float((p.argmax(1) == labels).mean())
    loss = float(-np.mean(np.log(np.clip(p[np.arange(len(p)), labels], 1e-7, 1))))
    return acc, loss


@dataclass
class OldMicroscopeWatch:
    """`--max-old-drop`: a fit may lose at most `max_drop` (a share) of the base's accuracy on the old
    microscope's check images; the base itself always qualifies. Inactive without check images."""

    base: float | None = None
    max_drop: float | None = None

    @classmethod
    def start(cls, base_accuracy: float | None, max_drop: float | None) -> "OldMicroscopeWatch":
        return cls(base_accuracy, max_drop if base_accuracy is not None else None)

    def allows(self, accuracy: float | None) -> bool:
        return self.max_drop is None or accuracy is None or accuracy >= self.base - self.max_drop - 1e-9

    def entry(self, accuracy: float | None) -> dict:
        return {} if self.max_drop is None else {"old_check_accuracy": round(float(accuracy), 4)}

    def note(self, accuracy: float | None) -> str:
        if self.max_drop is None:
            return ""
        return f", old microscope {accuracy:.4f}" + ("" if self.allows(accuracy) else " (too much lost: not chosen)")

    def summary(self, chosen_accuracy: float | None) -> dict:
        if self.max_drop is None:
            return {}
        return {"old_microscope": {"base_accuracy": round(self.base, 4), "chosen_accuracy": round(float(chosen_accuracy), 4),
                              "max_drop": self.max_drop}}


def fit_head(x: np.ndarray, targets: np.ndarray, weights: np.ndarray, w0: np.ndarray, b0: np.ndarray,
             x_held: np.ndarray, y_held: np.ndarray, logf=log.info, pulls=PULLS, steps: int = STEPS,
             lr: float = HEAD_LR, old: tuple | None = None) -> dict:
    """Weighted soft-target cross-entropy + pull * |W - W0|^2 / 2, full-batch Adam from (W0, b0).

    `x_held`: the held-out cells' features, (N, F) or per test-time view (V, N, F): the choice is made
    on the answers the device gives (probabilities averaged over the views).

    Returns the (W, b) with the best held-out accuracy (then loss) over every pull and checkpoint;
    checkpoint 0 (the base itself) competes too, so the fit never ends worse than the base on the
    held-out cells. `old`: (features, labels, max drop) of the old microscope's check images
    (`AdaptConfig.max_old_drop`): a checkpoint that loses more than that share of the base's
    accuracy on them is not chosen."""
    weights = (weights / weights.sum()).astype(np.float32)[:, None]
    acc0, loss0 = _score(view_probabilities(x_held, w0, b0), y_held)
    old_acc = (lambda w, b: _score(view_probabilities(old[0], w, b), old[1])[0]) if old is not None else \
        (lambda w, b: None)
    watch = OldMicroscopeWatch.start(old_acc(w0, b0), old[2] if old is not None else None)
    best = {"pull": None, "step": 0, "held_out_accuracy": acc0, "held_out_loss": loss0, "w": w0, "b": b0,
            "old_accuracy": watch.base}
    trials = []
    for pull in pulls:
        w, b = w0.copy(), b0.copy()
        m = [np.zeros_like(w), np.zeros_like(b)]
        v = [np.zeros_like(w), np.zeros_like(b)]
        for step in range(1, steps + 1):
            g_z = (probabilities(x, w, b) - targets) * weights  # d(mean weighted CE)/d logits
            grads = [x.T @ g_z + pull * (w - w0), g_z.sum(0)]
            for i, (param, g) in enumerate(zip((w, b), grads)):
                m[i] = 0.9 * m[i] + 0.1 * g
                v[i] = 0.999 * v[i] + 0.001 * g * g
                param -= lr * (m[i] / (1 - 0.9 ** step)) / (np.sqrt(v[i] / (1 - 0.999 ** step)) + 1e-8)
            if step % CHECK == 0:
                acc, loss = _score(view_probabilities(x_held, w, b), y_held)
                kept = old_acc(w, b)
                trials.append({"pull": pull, "step": step, "held_out_accuracy": round(acc, 4),
                               "held_out_loss": round(loss, 4), **watch.entry(kept)})
                if watch.allows(kept) and (acc, -loss) > (best["held_out_accuracy"], -best["held_out_loss"]):
                    best = {"pull": pull, "step": step, "held_out_accuracy": acc, "held_out_loss": loss,
                            "w": w.copy(), "b": b.copy(), "old_accuracy": kept}
        logf(f"head fit, pull {pull}: held-out accuracy {trials[-1]['held_out_accuracy']:.4f} after {steps} steps")
    logf(f"head fit chosen: pull {best['pull']}, step {best['step']}, held-out accuracy "
         f"{best['held_out_accuracy']:.4f} (base {acc0:.4f}){watch.note(best['old_accuracy'])}")
    return {"w": best["w"], "b": best["b"], "chosen_pull": best["pull"], "chosen_step": best["step"],
            "held_out_accuracy": round(best["held_out_accuracy"], 4), "base_held_out_accuracy": round(acc0, 4),
            "trials": trials, **watch.summary(best["old_accuracy"])}
