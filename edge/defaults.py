"""Which model a run uses: a bundle, a bare model file with a class list, or the default.

Without `--bundle` or `--model`, the run takes the active model of the device's model store
(`hemaedge edge install`), else the default bundle packaged with hemaedge.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hemaedge.edge.bundle import BundleError, load_bundle
from hemaedge.edge.cli_support import UserError
from hemaedge.edge.preprocess import InputContract


def packaged_default_bundle() -> Path:
    import hemaedge

    return Path(hemaedge.__file__).parent / "models" / "default"


def resolve_default_bundle() -> Path:
    """The store's active bundle, else the packaged default; UserError when there is neither."""
    try:
        from hemaedge.edge.store import default_store

        active = default_store().active_path()
        if active:
            return Path(active)
    except (ImportError, AttributeError):
        pass  # no model store on this install
    default = packaged_default_bundle()
    if (default / "manifest.json").is_file():
        return default
    raise UserError("no model to run: pass --bundle DIR (or --model FILE --classes ...), or install one "
                    "with `hemaedge edge install BUNDLE`; no default bundle is packaged with this install")


@dataclass
class LooseModel:
    """A model file without a bundle: the user vouches for its class list and input contract.

    Quacks like `Bundle` for the back ends and the recorder; nothing is checksummed.
    """

    model_path: Path
    classes: list[str]
    contract: InputContract
    backend: str
    output: dict = field(default_factory=lambda: {"kind": "probabilities"})

    @property
    def root(self) -> Path:
        return self.model_path.parent

    @property
    def size_bytes(self) -> int:
        return self.model_path.stat().st_size

    @property
    def name(self) -> str:
        return self.model_path.name

    def describe(self) -> str:
        return (f"{self.model_path.name}: {self.backend} model file (no bundle, unverified), "
                f"{len(self.classes)} classes, input {self.contract.size}px {self.contract.preprocess}/"
                f"{self.contract.dtype}, {self.size_bytes / 1e6:.2f} MB")


def parse_classes(spec: str) -> list[str]:
    """'a,b,c' or a text file with one class per line."""
    p = Path(spec)
    if p.is_file():
        names = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        names = [s.strip() for s in spec.split(",") if s.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise UserError(f"--classes {spec!r}: need at least two distinct class names (comma-separated or a file, one per line)")
    return names


def model_from_file(path, classes: str, contract: InputContract, output_kind: str = "probabilities") -> LooseModel:
    from hemaedge.edge.backends import backend_for_file

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such model file")
    return LooseModel(path, parse_classes(classes), contract, backend_for_file(path), {"kind": output_kind})


def load_model(bundle=None, model=None, classes=None, contract: InputContract | None = None,
               output_kind: str = "probabilities"):
    """A Bundle (verified) or LooseModel from the command-line choices."""
    if bundle and model:
        raise UserError("pass either --bundle or --model, not both")
    store = _signature_policy_store()
    if model:
        if store is not None:
            raise BundleError(f"the model store {store.root} accepts only signed bundles, and a bare model file "
                              "cannot be signed: run a signed bundle (--bundle) or the installed model")
        if not classes:
            raise UserError("--model needs --classes (comma-separated names, or a file with one per line)")
        return model_from_file(model, classes, contract or InputContract(), output_kind)
    root = Path(bundle) if bundle else resolve_default_bundle()
    try:
        loaded = load_bundle(root)
    except BundleError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"{root}: cannot load the bundle ({exc})") from None
    if store is not None:  # the device's policy holds for bundles run directly too
        try:
            store.check_signature(loaded.manifest, require=True)
        except BundleError as exc:
            raise BundleError(f"{root}: {exc} (the model store {store.root} requires signed bundles)") from None
    return loaded


def _signature_policy_store():
    """The default model store when it requires signed bundles, else None."""
    try:
        from hemaedge.edge.store import default_store

        store = default_store()
    except ImportError:
        return None  # no model store on this install
    requires = getattr(store, "requires_signature", None)  # a stand-in store (tests) may not have it
    return store if requires is not None and requires() else None
