"""Row status: passed, failed-validation, failed or skipped, with the reason.

Every planned row ends with exactly one status, so nothing silently disappears from a table
(Ultralytics' benchmark mode). The rules, in order:

* skipped            - not run: its runtime is missing on this device, the preset leaves it
                       out, or the run was interrupted before it; `reason` says which.
* failed             - it could not be loaded or run (bad bundle, runtime error, crash,
                       time-out, or the export itself failed).
* failed-validation  - it ran, but its output is wrong: bad output shape / NaN, a crash while
                       scoring, accuracy more than `max_drop` points below the reference
                       (the Keras fp32 model in the same run, or the source accuracy recorded
                       at export on the same images), or the export's own parity check failed.
* passed             - everything else.
"""
from __future__ import annotations

PASSED, FAILED_VALIDATION, FAILED, SKIPPED = "passed", "failed-validation", "failed", "skipped"
STATUSES = (PASSED, FAILED_VALIDATION, FAILED, SKIPPED)
VALIDATION_STAGES = ("validate-output", "accuracy")
DEFAULT_MAX_DROP = 1.0  # accuracy points, as the export parity check


def decide(result: dict | None, *, accuracy: float | None = None, reference: float | None = None,
           reference_name: str = "reference", max_drop: float = DEFAULT_MAX_DROP,
           manifest_parity: dict | None = None) -> tuple[str, str]:
    """(status, reason) of a row from its worker result and the accuracy it is held to."""
    if result is None:
        return FAILED, "no result from the measuring process"
    if not result.get("ok"):
        stage, error = result.get("stage", "?"), result.get("error", "unknown error")
        if stage in VALIDATION_STAGES:
            return FAILED_VALIDATION, f"{stage}: {error}"
        return FAILED, f"{stage}: {error}"
    if accuracy is not None and reference is not None:
        drop = 100.0 * (reference - accuracy)
        if drop > max_drop + 1e-9:
            return FAILED_VALIDATION, (f"accuracy {100 * accuracy:.2f}% is {drop:.2f} points below "
                                       f"{reference_name} {100 * reference:.2f}% (threshold {max_drop:g})")
    parity = manifest_parity or {}
    if parity.get("status") == FAILED_VALIDATION:
        return FAILED_VALIDATION, f"export parity check: {parity.get('reason') or 'failed'}"
    return PASSED, ""
