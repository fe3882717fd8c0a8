"""What `hemaedge data info` and `hemaedge data verify` report about a data set."""
from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemaedge.edge.errors import DataError
from hemaedge.train.data.medmnist import md5sum
from hemaedge.train.data.readers import Dataset, _default_workers, _inspect, _resolve, probe_image

# ----------------------------------------------------------------------------- info and verify


def describe(ds: Dataset, sample_per_class: int = 1) -> dict:
    """What `hemaedge data info` prints: splits, per-class counts, image size and mode.

    For trees, image size/mode come from the first `sample_per_class` files of every class in
    every split (cheap); `verify_dataset` decodes them all.
    """
    sizes, modes, sampled = {}, {}, 0
    for name, s in ds.splits.items():
        if s.npz is not None:
            shape = s.shape
            sizes[f"{shape[2]}x{shape[1]}"] = sizes.get(f"{shape[2]}x{shape[1]}", 0) + len(s)
            mode = "L" if len(shape) == 3 or shape[3] == 1 else "RGB"
            modes[mode] = modes.get(mode, 0) + len(s)
            continue
        for k in range(ds.num_classes):
            for i in np.flatnonzero(s.labels == k)[:sample_per_class]:
                w, h, mode = probe_image(s.paths[i])
                sizes[f"{w}x{h}"] = sizes.get(f"{w}x{h}", 0) + 1
                modes[mode] = modes.get(mode, 0) + 1
                sampled += 1
    return {
        "path": str(ds.root), "name": ds.name, "kind": ds.kind, "protocol": ds.protocol,
        "classes": list(ds.classes),
        "splits": {n: {"count": len(s), "per_class": ds.counts(n).tolist()} for n, s in ds.splits.items()},
        "total": int(sum(len(s) for s in ds.splits.values())),
        "image": {"sizes": sizes, "modes": modes, "sampled_files": sampled if ds.kind != "npz" else None},
        "expected_md5": ds.expected_md5,
    }


@dataclass
class VerifyReport:
    """Result of `verify_dataset`: problems make the data set unfit; warnings are worth knowing."""

    path: Path
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: int = 0
    md5: str | None = None
    expected_md5: str | None = None
    sizes: dict = field(default_factory=dict)
    modes: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _probe_file(path: Path):
    w, h, mode = probe_image(path)
    return w, h, mode, hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def _duplicate_warnings(keys, labels, splits, where, classes) -> list[str]:
    """Identical images listed more than once: across splits (leakage) and with two labels."""
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    dups = [g for g in groups.values() if len(g) > 1]
    if not dups:
        return []
    cross = [g for g in dups if len({splits[i] for i in g}) > 1]
    relabel = [g for g in dups if len({labels[i] for i in g}) > 1]
    out = [f"{len(dups)} images appear more than once ({len(cross)} across splits), e.g. "
           + "; ".join(" = ".join(where[i] for i in g) for g in dups[:3])]
    for g in relabel[:5]:
        out.append("same image with different labels: " + " vs ".join(f"{where[i]} ({classes[labels[i]]})" for i in g))
    return out


def verify_dataset(path_or_name, classes=None, data_dir=None, workers: int | None = None,
                   progress: bool | None = None) -> VerifyReport:
    """Check a data set thoroughly: md5 where known, every image decodable and complete, empty
    classes, label range, duplicates. A data set that cannot be found raises DataError."""
    from tqdm import tqdm

    path = _resolve(path_or_name, data_dir, False)
    report = VerifyReport(path=path)
    try:
        ds, problems = _inspect(path, classes, data_dir, False, strict=False)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    report.problems += problems
    report.expected_md5 = ds.expected_md5
    for name in ds.splits:
        for c, n in zip(ds.classes, ds.counts(name)):
            if n == 0 and ds.kind == "npz":
                report.problems.append(f"{ds.root}: class {c!r} has no images in split {name!r}")
    if ds.kind == "npz":
        report.md5 = md5sum(ds.root)
        if ds.expected_md5 and report.md5 != ds.expected_md5:
            report.problems.append(f"{ds.root}: md5 {report.md5} differs from MedMNIST's published "
                                   f"{ds.expected_md5} for {ds.root.name}")
        elif not ds.expected_md5:
            report.warnings.append(f"{ds.root}: no published md5 for this file name (md5 {report.md5})")
        keys, labels, splits, where = [], [], [], []
        for name, s in ds.splits.items():
            arr = s.array()
            keys += [hashlib.blake2b(row.tobytes(), digest_size=16).hexdigest() for row in arr]
            labels += s.labels.tolist()
            splits += [name] * len(s)
            where += [f"{name}_images[{i}]" for i in range(len(s))]
            size = f"{arr.shape[2]}x{arr.shape[1]}"
            mode = "L" if arr.ndim == 3 or arr.shape[3] == 1 else "RGB"
            report.sizes[size] = report.sizes.get(size, 0) + len(arr)
            report.modes[mode] = report.modes.get(mode, 0) + len(arr)
        report.checked = len(keys)
        report.warnings += _duplicate_warnings(keys, labels, splits, where, ds.classes)
        return report
    # Image trees: decode every file on a thread pool.
    jobs = [(name, i, p) for name, s in ds.splits.items() for i, p in enumerate(s.paths)]

    def check(job):
        try:
            return job, _probe_file(job[2]), None
        except (DataError, OSError) as exc:
            return job, None, str(exc)

    keys, labels, splits, where = [], [], [], []
    with ThreadPoolExecutor(max_workers=workers or _default_workers()) as pool:
        for (name, i, p), res, err in tqdm(pool.map(check, jobs), total=len(jobs), desc="verifying",
                                           unit="img", disable=None if progress is None else not progress):
            if err:
                report.problems.append(err)
                continue
            w, h, mode, digest = res
            report.sizes[f"{w}x{h}"] = report.sizes.get(f"{w}x{h}", 0) + 1
            report.modes[mode] = report.modes.get(mode, 0) + 1
            keys.append(digest)
            labels.append(int(ds.splits[name].labels[i]))
            splits.append(name)
            rel = p.relative_to(ds.root).as_posix()
            where.append(rel if ds.kind == "tree" else f"{rel} ({name})")
    report.checked = len(jobs)
    report.warnings += _duplicate_warnings(keys, labels, splits, where, ds.classes)
    if ds.ignored_files:
        report.warnings.append(f"{len(ds.ignored_files)} non-image files ignored, e.g. {ds.ignored_files[0]}")
    if (ds.root / "manifest.csv").is_file():  # a calibration folder: check its sha256 list too
        from hemaedge.train.data.calibration import verify_calibration

        report.problems += verify_calibration(ds.root)
    return report
