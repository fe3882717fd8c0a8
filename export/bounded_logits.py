"""A classifier end that survives full-integer int8: centred, bounded logits out, softmax on the host.

Why: int8 gives every tensor one scale, set by the largest value seen in calibration. Some models
produce logits of very different size for different classes (the default EfficientNet-Lite0
saturates its ReLU6 features on lymphocytes: logits up to ~525, while other cells' top two
logits are ~3 apart). One int8 step of the logit tensor is then ~2 logits, and close calls flip:
-5.5 points of accuracy. Ranges only need to cover what decides the answer:

* softmax is unchanged when the same number is subtracted from every logit of a row, and any
  fixed combination of the row's logits, z @ a + beta, is such a number: subtracting it gives
  *centred* logits c = x @ (W - (W a) 1') + (b - (b.a + beta)) with the same probabilities. Two
  choices of (a, beta) are tried on the calibration images, the plain mean of the logits and a
  least-squares fit of the runner-up logit, and the one needing the smaller L is kept;
* the ranking is decided by the top logits; one clipped at +L still wins as long as the second
  largest stays below L, and logits below -L add < e^-L to the softmax sum.

So the Dense+softmax end becomes  relu6(3 * (c / L + 1))  (one FULLY_CONNECTED with fused RELU6,
range [0, 6] = centred logits in [-L, L]) and the manifest says  kind "logits", logit_scale L/3:
the device computes softmax(logit_scale * output) over the few classes in float. Inside [-L, L]
that is exactly the source model's softmax; L is chosen from the calibration images as 1.5 x the
largest |runner-up| (or -winner) centred logit seen (never below MIN_BOUND).
"""
from __future__ import annotations

import math

import numpy as np

MIN_BOUND = 4.0
MARGIN = 1.5


def softmax_dense_end(model):
    """(Dense layer, a tensor of `model`'s graph -> that Dense's input) for a model ending in a
    Dense with softmax (directly, via a Softmax/Activation layer, or inside a nested model such as
    the fused backbone+ANN); None when the model does not end that way."""
    import keras

    trunk = None  # maps the outer tensor to the Dense input when the end is a nested model
    last = model.layers[-1]
    if isinstance(last, keras.Model):
        inner = softmax_dense_end(last)
        if inner is None:
            return None
        dense, inner_input = inner
        nodes = getattr(last, "_inbound_nodes", [])
        if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
            return None
        trunk = keras.Model(last.inputs, inner_input)
        return dense, trunk(nodes[0].input_tensors[0])
    if isinstance(last, keras.layers.Dense):
        return (last, last.input) if _is_softmax(last.activation) else None
    if isinstance(last, (keras.layers.Softmax, keras.layers.Activation)) and len(model.layers) > 1:
        act = getattr(last, "activation", None)
        prev = model.layers[-2]
        softmax = isinstance(last, keras.layers.Softmax) or _is_softmax(act)
        if softmax and isinstance(prev, keras.layers.Dense) and _is_linear(prev.activation):
            return prev, prev.input
    return None


def _is_softmax(fn) -> bool:
    return getattr(fn, "__name__", "") == "softmax"


def _is_linear(fn) -> bool:
    return getattr(fn, "__name__", "") == "linear"


def _layer_class():
    import keras

    class BoundedLogits(keras.layers.Layer):
        """relu6(x @ kernel + bias) with the centred, rescaled weights of a softmax Dense."""

        def __init__(self, kernel, bias, bound: float | None, shift=None, **kw):
            super().__init__(**kw)
            self._init = (np.asarray(kernel, np.float64), np.asarray(bias, np.float64), shift)
            self.bound = bound

        def build(self, input_shape):
            w, b, shift = self._init
            if shift is not None:  # subtract z @ a + beta from every logit z (softmax-invariant)
                a, beta = np.asarray(shift[0], np.float64), float(shift[1])
                w = w - (w @ a)[:, None]
                b = b - (b @ a + beta)
            if self.bound:  # c in [-L, L]  ->  3 (c / L + 1) in [0, 6]
                w, b = w * (3.0 / self.bound), b * (3.0 / self.bound) + 3.0
            self.kernel = self.add_weight(shape=w.shape, initializer="zeros", trainable=False, name="kernel")
            self.bias = self.add_weight(shape=b.shape, initializer="zeros", trainable=False, name="bias")
            self.kernel.assign(w)
            self.bias.assign(b)

        def call(self, x):
            import keras

            z = keras.ops.matmul(x, self.kernel) + self.bias
            return keras.ops.relu6(z) if self.bound else z

    return BoundedLogits


def logits_model(model, shift=None):
    """The model with its softmax Dense replaced by its logits, shifted by `shift` = (a, beta)
    when given (no bound): to choose the shift and L."""
    import keras

    end = softmax_dense_end(model)
    if end is None:
        return None
    dense, x = end
    kernel, bias = dense.get_weights()
    return keras.Model(model.inputs, _layer_class()(kernel, bias, None, shift, name="logits")(x))


def bounded_logits_model(model, bound: float, shift):
    import keras

    dense, x = softmax_dense_end(model)
    kernel, bias = dense.get_weights()
    return keras.Model(model.inputs, _layer_class()(kernel, bias, float(bound), shift, name="bounded_logits")(x))


def needed_range(centred: np.ndarray) -> np.ndarray:
    """Per row, how far from 0 the decisive logits reach: the runner-up must stay below L and
    the winner above -L for the clipped ranking to equal the real one."""
    top2 = np.sort(np.asarray(centred, np.float64), axis=1)[:, -2:]
    return np.maximum(top2[:, 0], -top2[:, 1])


def choose_bound(centred: np.ndarray) -> dict:
    """L from calibration centred logits (N, C): MARGIN x the largest needed range."""
    c = np.asarray(centred, np.float64)
    need = float(needed_range(c).max()) if len(c) else 0.0
    bound = max(MIN_BOUND, float(math.ceil(MARGIN * need)))
    top = c.max(axis=1) if len(c) else np.zeros(0)
    return {"bound": bound, "logit_scale": bound / 3.0, "calibration_needed_max": round(need, 4),
            "calibration_top_clipped": round(float((top > bound).mean()), 4) if len(c) else 0.0,
            "calibration_images": int(len(c))}


def candidate_shifts(z: np.ndarray) -> dict:
    """(a, beta) per method for raw logits z (N, C): the row mean, and a least-squares fit of the
    runner-up logit from the row's logits (puts every row's decisive pair around 0)."""
    n, c = z.shape
    out = {"mean": (np.full(c, 1.0 / c), 0.0)}
    if n > c + 1:
        runner_up = np.sort(z, axis=1)[:, -2]
        coef, *_ = np.linalg.lstsq(np.c_[z, np.ones(n)], runner_up, rcond=None)
        out["runner-up fit"] = (coef[:c], float(coef[c]))
    return out


def bound_for_int8(model, calib_batches):
    """(model with bounded logits, settings) or (None, reason) when the model has no softmax Dense end.

    `calib_batches`: an iterable of input batches exactly as the converter's calibration sees them.
    """
    raw = logits_model(model)
    if raw is None:
        return None, "the model does not end in a Dense layer with softmax"
    z = np.concatenate([np.asarray(raw.predict(x, verbose=0), np.float64) for x in calib_batches])
    best = None
    for name, (a, beta) in candidate_shifts(z).items():
        info = choose_bound(z - (z @ a + beta)[:, None])
        if best is None or info["bound"] < best[1]["bound"]:
            best = ((a, beta), dict(info, shift=name))
    shift, info = best
    info["calibration_logit_range"] = [round(float(z.min()), 3), round(float(z.max()), 3)]  # why it was needed
    info["method"] = "shifted logits clipped to [-bound, bound] (fused RELU6); softmax on the host"
    return bounded_logits_model(model, info["bound"], shift), info
