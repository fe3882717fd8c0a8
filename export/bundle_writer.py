"""Pack an exported artifact into a verified bundle (`hemaedge.edge.bundle.write_bundle`).

The manifest gets the class list, the artifact's exact input contract (with the quantization
scale / zero point the converter produced), the output quantization, the source model's
checksum, the export settings, the parity metrics and a top-level "validation" block whose
"status" (passed / failed-validation / not-validated) a device can check before installing.
"""
from __future__ import annotations

from pathlib import Path

from hemaedge.edge.bundle import write_bundle
from hemaedge.edge.preprocess import InputContract

from hemaedge.edge.backends import REGISTRY, backend_for_file

MODEL_FILES = {name: info.model_file for name, info in REGISTRY.items()}


# Sections a training run's sidecar may carry into the manifest (train/finetune.confidence_sections):
# `output.temperature` is merged into the manifest's `output`, the others are copied as they are;
# `extra_cells`: the other microscopes' cells a multi-domain model was trained on (provenance).
SIDECAR_SECTIONS = ("ood", "domain", "extra_cells")


def confidence_sections(sidecar: dict, output: dict) -> tuple[dict, dict]:
    """(output with the sidecar's temperature, {section: ...}) for write_export_bundle(manifest_extra=...)."""
    out = dict(output)
    t = (sidecar.get("output") or {}).get("temperature")
    if t:
        out["temperature"] = float(t)
    return out, {k: sidecar[k] for k in SIDECAR_SECTIONS if sidecar.get(k)}


def backend_for(path) -> str:
    """The back end of a model file, from the registry's suffixes (BackendError is a BundleError)."""
    return backend_for_file(path)


def write_export_bundle(out_dir, artifact, *, model_format: str, classes: list[str], contract: InputContract,
                        output: dict, source: dict, settings: dict, metrics: dict | None = None,
                        validation: dict | None = None, extra_files: dict | None = None,
                        name: str | None = None, overwrite: bool = False, manifest_extra: dict | None = None) -> Path:
    """Copy `artifact` (a model file) into a new bundle at out_dir, atomically.

    `manifest_extra` adds top-level manifest entries (e.g. an adapted model's provenance)."""
    backend = backend_for(artifact)
    files = {MODEL_FILES[backend]: Path(artifact)}
    files.update(extra_files or {})
    extra = {**(manifest_extra or {}),
             "validation": validation or {"status": "not-validated", "reason": "no parity data given"}}
    return write_bundle(out_dir, files, model_file=MODEL_FILES[backend], backend=backend,
                        model_format=model_format, classes=classes, contract=contract, output=output,
                        source=source, export=settings, metrics=metrics or {}, name=name,
                        extra=extra, overwrite=overwrite, check=_smoke_check(backend))


def _smoke_check(backend: str):
    """The device's load + smoke inference, where this machine has the back end (a TensorRT
    bundle written off the device is checked by `edge install` on the device instead)."""
    from hemaedge.edge.backends import REGISTRY
    from hemaedge.edge.bundle_check import check_runnable

    return check_runnable if REGISTRY[backend].available() else None
