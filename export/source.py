"""The model being exported: a Keras file plus the sidecar JSON the training code writes next to it.

`runs/x/best.keras` + `runs/x/best.json` ({"classes": [...], "input": InputContract dict,
"weights": ..., "metrics": {...}}). The sidecar tells export the class list and the pixel
contract (preprocessing mode, scaling); the input size is read from the model itself. Without
a sidecar, the caller passes the classes / preprocessing / size explicitly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from hemaedge.edge.bundle import sha256_file
from hemaedge.edge.cli_support import UserError
from hemaedge.edge.preprocess import InputContract


@dataclass
class SourceModel:
    """A loaded source model with everything an export needs to know about it."""

    path: Path
    model: object  # keras.Model
    classes: list[str]
    contract: InputContract  # float32 contract of the source model
    sha256: str
    sidecar: dict = field(default_factory=dict)
    output_kind: str = "probabilities"  # or "logits" when the graph has no softmax at the end

    @property
    def name(self) -> str:
        return self.path.parent.name if self.path.stem in ("best", "model", "last") else self.path.stem

    def predict(self, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Float input batch -> class probabilities (N, C)."""
        out = self.model.predict(x, batch_size=batch_size, verbose=0)
        out = np.asarray(out, dtype=np.float32)
        if self.output_kind == "logits":
            from hemaedge.edge.preprocess import softmax

            out = softmax(out)
        return out

    def source_info(self) -> dict:
        return {"file": self.path.name, "sha256": self.sha256, "kind": "keras",
                "metrics": self.sidecar.get("metrics", {}), "weights": self.sidecar.get("weights")}


def sidecar_path(model_path) -> Path:
    return Path(model_path).with_suffix(".json")


def read_sidecar(model_path) -> dict:
    path = sidecar_path(model_path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: sidecar is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: sidecar must be a JSON object with 'classes' and 'input'")
    return data


def model_input_size(model) -> int:
    """Square spatial size from a Keras model's input shape (N, S, S, 3)."""
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4 or shape[3] != 3 or shape[1] is None or shape[1] != shape[2]:
        raise UserError(f"expected a model taking (N, S, S, 3) images, its input shape is {shape}")
    return int(shape[1])


def build_contract(sidecar: dict, size: int, *, preprocess: str | None = None,
                   scaling: str | None = None, where: str = "model") -> InputContract:
    """Float32 input contract: sidecar values, then explicit options, then the model's own size."""
    data = dict(sidecar.get("input") or {})
    data.setdefault("scaling", "raw")
    if preprocess:
        data["preprocess"] = preprocess
    if scaling:
        data["scaling"] = scaling
    if "size" in data and int(data["size"]) != size:
        raise UserError(f"{where}: sidecar says input size {data['size']} but the model takes {size} px")
    data.update(size=size, dtype="float32", quant_scale=None, quant_zero_point=None)
    try:
        return InputContract.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: bad input contract ({exc})") from None


def load_keras_model(path):
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    if path.suffix not in (".keras", ".h5"):
        raise UserError(f"{path}: expected a Keras model file (.keras or .h5)")
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # a damaged or foreign file: say which one
        raise UserError(f"{path}: cannot load as a Keras model ({type(exc).__name__}: {exc})") from None


def detect_output_kind(model, size: int) -> str:
    """'probabilities' when outputs of a probe batch are non-negative rows summing to 1, else 'logits'."""
    rng = np.random.default_rng(0)
    probe = rng.integers(0, 256, (4, size, size, 3)).astype(np.float32)
    out = np.asarray(model.predict(probe, verbose=0), dtype=np.float64)
    if out.min() >= -1e-6 and np.allclose(out.sum(axis=-1), 1.0, atol=1e-3):
        return "probabilities"
    return "logits"


def load_source(path, *, classes: list[str] | None = None, preprocess: str | None = None,
                scaling: str | None = None, size: int | None = None) -> SourceModel:
    """Load a Keras model and its sidecar; explicit options override the sidecar."""
    path = Path(path)
    model = load_keras_model(path)
    sidecar = read_sidecar(path)
    msize = model_input_size(model)
    if size is not None and int(size) != msize:
        raise UserError(f"{path}: --size {size} but the model takes {msize} px")
    names = list(classes) if classes else list(sidecar.get("classes") or [])
    if not names:
        raise UserError(f"{path}: no class list; write {sidecar_path(path).name} next to it or pass --classes a,b,c")
    n_out = int(model.outputs[0].shape[-1])
    if n_out != len(names):
        raise UserError(f"{path}: the model has {n_out} outputs but {len(names)} class names were given")
    contract = build_contract(sidecar, msize, preprocess=preprocess, scaling=scaling, where=str(path))
    return SourceModel(path=path, model=model, classes=names, contract=contract,
                       sha256=sha256_file(path), sidecar=sidecar,
                       output_kind=detect_output_kind(model, msize))


def integer_contract(contract: InputContract, dtype: str, scale: float, zero_point: int) -> InputContract:
    return replace(contract, dtype=dtype, quant_scale=float(scale), quant_zero_point=int(zero_point))
