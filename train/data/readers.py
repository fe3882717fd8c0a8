"""Data sets: MedMNIST `.npz` files and ImageFolder trees behind one small API.

Everyone who needs images (training, export parity checks, benchmarks, calibration) goes
through this module, so a split, a class order and a decoded pixel mean the same thing
everywhere.

    from hemaedge.train.data import open_dataset

    ds = open_dataset("../shared/data/bloodmnist128")     # a path, or a name (see below)
    ds.classes                  # ('basophil', ..., 'platelet'): label i is ds.classes[i]
    ds.splits["train"]          # SplitData: .labels (int64, N), .paths (trees) or lazy npz array
    ds.counts("train")          # images per class, in label order
    x, y = ds.load_images("val", size=128)        # uint8 RGB (N, 128, 128, 3), int64 (N,)
    x, y = ds.load_images("val", indices=[0, 5])  # any subset, in the order given
    for x, y in ds.iter_batches("train", batch_size=256, size=128): ...   # big trees

What `open_dataset(path_or_name)` accepts:
  * a MedMNIST `.npz` (official keys `{train,val,test}_{images,labels}`, any image size,
    grayscale or RGB; labels (N, 1) or (N,)),
  * a folder `{train,val,test}/{class}/*.jpg|png|...` (the official split as folders),
  * a folder `{class}/*.jpg` (one folder per class): split stratified 72/8/20 with seed 42,
    the PBC paper's protocol (sklearn `train_test_split` twice, reproducible),
  * a folder holding exactly one `.npz`,
  * a name such as `bloodmnist`, `bloodmnist_128` or `bloodmnist128`, looked up in
    `data_dir`, then `$HEMAEDGE_DATA` (a folder holding the file or tree), then the download
    cache (`$HEMAEDGE_CACHE` or the platform's user cache dir); with `download=True` a known
    MedMNIST file is fetched from Zenodo and checked against its published md5.

Class order: an explicit list (`classes=[...]` or a path to a text file, or a `classes.txt`
at the root of a tree) wins; otherwise BloodMNIST's order when the class folders are
BloodMNIST's names, sorted folder names otherwise.

Bad data raises `DataError` whose message names the file and the problem. Module-level
imports are numpy, OpenCV and hemaedge.edge only (scikit-learn is imported when a flat
tree is split), so readers like the calibration loader work on an edge-only install.
"""
from __future__ import annotations

import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from hemaedge.edge.paths import cache_dir
from hemaedge.edge.preprocess import FrameFormatError, read_image_rgb, resize, truncation
from hemaedge.edge.errors import DataError
from hemaedge.train.data.medmnist import (CLASS_NAMES_BLOODMNIST, MEDMNIST_CLASSES, MEDMNIST_MD5, download_medmnist,
                                          medmnist_id)

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
CLASSES_FILE = "classes.txt"

# The PBC paper's protocol for a folder-per-class tree (Hameed 2025): 72/8/20, seed 42.
SPLIT_SEED = 42
TEST_FRACTION = 0.20
VAL_FRACTION_OF_TRAINVAL = 0.10  # 8% of the whole = 10% of the remaining 80%
FLAT_PROTOCOL = "stratified 72/8/20 (seed 42)"


# ----------------------------------------------------------------------------- containers


@dataclass
class SplitData:
    """One split: integer labels plus either image files (trees) or a lazily read npz array."""

    name: str
    labels: np.ndarray                      # int64 (N,)
    paths: tuple[Path, ...] | None = None   # ImageFolder trees
    npz: Path | None = None                 # MedMNIST: file and array name, read on first use
    key: str | None = None
    shape: tuple[int, ...] | None = None    # npz image array shape (N, H, W[, C])
    _array: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(len(self.labels))

    def array(self) -> np.ndarray:
        """The whole npz image array (read once, then kept)."""
        if self.npz is None:
            raise TypeError(f"split {self.name!r} is an image-file tree, not an array")
        if self._array is None:
            try:
                with np.load(self.npz, allow_pickle=False) as data:
                    self._array = data[self.key]
            except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
                raise DataError(f"{self.npz}: cannot read '{self.key}': {exc}") from None
        return self._array


@dataclass
class Dataset:
    """A data set with a fixed class order and train/val/test splits."""

    root: Path
    kind: str                      # "npz", "tree" (split folders) or "flat-tree" (split here)
    classes: tuple[str, ...]
    splits: dict[str, SplitData]
    protocol: str                  # "official split" or FLAT_PROTOCOL
    name: str = ""
    expected_md5: str | None = None  # known MedMNIST checksum for this file name, if any
    ignored_files: tuple[Path, ...] = ()  # non-image files seen inside class folders

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, split: str) -> SplitData:
        if split not in self.splits:
            raise DataError(f"{self.root}: no split {split!r}; splits are {list(self.splits)}")
        return self.splits[split]

    def counts(self, split: str) -> np.ndarray:
        """Images per class in label order."""
        return np.bincount(self.split(split).labels, minlength=self.num_classes)

    def files(self, split: str) -> tuple[Path, ...]:
        s = self.split(split)
        if s.paths is None:
            raise DataError(f"{self.root}: split {split!r} is an array in a .npz, not image files")
        return s.paths

    def load_images(self, split: str, size: int | None = None, indices: Sequence[int] | None = None,
                    workers: int | None = None, progress: bool | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """uint8 RGB images (N, H, W, 3) and int64 labels (N,) of one split.

        `size` resizes to size x size with the device's own `resize` (needed when a tree mixes
        image sizes); `indices` picks a subset in the given order; files are decoded on a
        thread pool (OpenCV releases the GIL). `progress=None` shows a bar on a terminal only.
        """
        s = self.split(split)
        idx = np.arange(len(s)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= len(s)):
            raise DataError(f"{self.root}: index out of range for split {split!r} ({len(s)} images)")
        labels = s.labels[idx]
        if s.npz is not None:
            return _array_images(s.array()[idx], size), labels
        return _read_files([s.paths[i] for i in idx], size, workers, progress, f"{split}"), labels

    def image_list(self, split: str, indices: Sequence[int] | None = None) -> list[np.ndarray]:
        """Like `load_images` without `size`, as a list: each image keeps its own size (the
        model's resize happens later, in `prepare_batch`, as on the device)."""
        s = self.split(split)
        idx = np.arange(len(s)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if s.npz is not None:
            return list(_array_images(s.array()[idx], None))
        return _decode_files([s.paths[i] for i in idx], None, None, False, split)

    def iter_batches(self, split: str, batch_size: int = 256, size: int | None = None,
                     shuffle: bool = False, seed: int = SPLIT_SEED, workers: int | None = None
                     ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(images, labels) batches of one split, so a big tree never sits in memory at once."""
        n = len(self.split(split))
        order = np.random.default_rng(seed).permutation(n) if shuffle else np.arange(n)
        for start in range(0, n, int(batch_size)):
            yield self.load_images(split, size, order[start:start + int(batch_size)], workers, False)


# ----------------------------------------------------------------------------- image files


def _structural_problem(data: bytes) -> str | None:
    """Name an empty or cut-short file plainly: the device's own check (`edge.preprocess.truncation`,
    which walks the file's structure whatever the OpenCV version does with a cut JPEG)."""
    return "empty file" if not data else truncation(data)


def check_image_file(path) -> None:
    """Raise DataError naming `path` when the file is empty or truncated."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    problem = _structural_problem(data)
    if problem:
        raise DataError(f"{path}: {problem}")


def read_image(path) -> np.ndarray:
    """A checked image file as uint8 RGB, decoded by the device's own `read_image_rgb` (which checks
    the file's structure itself: a good file is read and walked once)."""
    try:
        return read_image_rgb(path)
    except (FrameFormatError, OSError) as exc:
        check_image_file(path)  # unreadable, empty or cut short: named plainly ("PATH: truncated JPEG")
        raise DataError(str(exc)) from None


def probe_image(path) -> tuple[int, int, str]:
    """(width, height, mode) of a file after a full check and decode; DataError when it is bad.

    mode is "L" (gray), "RGB" or "RGBA", as stored in the file.
    """
    import cv2

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    problem = _structural_problem(data)
    if problem:
        raise DataError(f"{path}: {problem}")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{path}: not a readable image (corrupt or unknown format)")
    channels = 1 if img.ndim == 2 else img.shape[2]
    return img.shape[1], img.shape[0], {1: "L", 3: "RGB", 4: "RGBA"}.get(channels, f"{channels}ch")


def _default_workers() -> int:
    return max(1, min(8, 2 * (os.cpu_count() or 1)))


def _decode_files(paths, size, workers, progress, what="images") -> list[np.ndarray]:
    def one(p):
        img = read_image(p)
        return resize(img, size) if size else img

    if not paths:
        return []
    from tqdm import tqdm

    # None lets tqdm show the bar on a terminal only; small reads never show one.
    disable = (None if len(paths) >= 500 else True) if progress is None else not progress
    with ThreadPoolExecutor(max_workers=workers or _default_workers()) as pool:
        return list(tqdm(pool.map(one, paths), total=len(paths), desc=f"reading {what}",
                         unit="img", disable=disable))


def _read_files(paths, size, workers, progress, what="images") -> np.ndarray:
    if not paths:
        s = size or 0
        return np.zeros((0, s, s, 3), np.uint8)
    images = _decode_files(paths, size, workers, progress, what)
    odd = next((i for i, im in enumerate(images) if im.shape != images[0].shape), None)
    if odd is not None:
        raise DataError(f"{paths[odd]}: image size {images[odd].shape[1]}x{images[odd].shape[0]} differs from "
                        f"{paths[0]} ({images[0].shape[1]}x{images[0].shape[0]}); pass a size to resize them")
    return np.stack(images)


def _array_images(arr: np.ndarray, size: int | None) -> np.ndarray:
    if arr.ndim == 3:  # grayscale MedMNIST sets: replicate to 3 channels, like GRAY2RGB does
        arr = np.repeat(arr[..., None], 3, axis=3)
    elif arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=3)
    if size and arr.shape[1:3] != (size, size):
        arr = np.stack([resize(a, size) for a in arr]) if len(arr) else np.zeros((0, size, size, 3), np.uint8)
    return np.ascontiguousarray(arr)


# ----------------------------------------------------------------------------- class lists


def read_class_list(path) -> tuple[str, ...]:
    """One class name per line (blank lines and # comments ignored), label i = line i."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read class list ({exc.strerror or exc})") from None
    names = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not names:
        raise DataError(f"{path}: class list is empty")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{path}: class list repeats {dup}")
    return tuple(names)


def class_order(folder_names, explicit=None) -> tuple[str, ...]:
    """Stable label order: explicit list, else BloodMNIST's order for its names, else sorted."""
    if explicit is not None:
        return tuple(explicit)
    names = set(folder_names)
    if names == set(CLASS_NAMES_BLOODMNIST):
        return CLASS_NAMES_BLOODMNIST
    return tuple(sorted(names))


def _explicit_classes(classes, root: Path | None):
    if classes is None:
        if root is not None and root.is_dir() and (root / CLASSES_FILE).is_file():
            return read_class_list(root / CLASSES_FILE)
        return None
    if isinstance(classes, (str, os.PathLike)):
        return read_class_list(classes)
    names = tuple(str(c) for c in classes)
    if not names:
        raise DataError("the class list is empty")
    return names


# ----------------------------------------------------------------------------- trees


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__")


def _subdirs(folder: Path) -> list[Path]:
    with os.scandir(folder) as it:
        return sorted((Path(e.path) for e in it if e.is_dir() and not _is_hidden(e.name)), key=lambda p: p.name)


def _class_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files sorted by name, other files) directly inside one class folder."""
    images, other = [], []
    with os.scandir(folder) as it:
        for e in it:
            if _is_hidden(e.name) or not e.is_file():
                continue
            (images if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES else other).append(e.name)
    return [folder / n for n in sorted(images)], [folder / n for n in sorted(other)]


def _scan_split_tree(root: Path, classes, required=SPLITS):
    """Scan `{train,val,test}/{class}/*`; returns (classes, {split: (paths, labels)}, problems, other)."""
    problems, other, per_split = [], [], {}
    present = [s for s in SPLITS if (root / s).is_dir()]
    for s in required:
        if s not in present:
            problems.append(f"{root / s}: missing split folder (expected {', '.join(SPLITS)} under {root})")
    folders = {s: {d.name: d for d in _subdirs(root / s)} for s in present}
    all_names = sorted({n for f in folders.values() for n in f})
    if not all_names:
        problems.append(f"{root}: no class folders inside the split folders")
        return (), {}, problems, other
    order = class_order(all_names, classes)
    unknown = [n for n in all_names if n not in order]
    for n in unknown:
        problems.append(f"{root}: class folder {n!r} is not in the class list {list(order)}")
    for s in present:
        paths, labels = _scan_class_folders(root / s, folders[s], order, f" in {s}", problems, other)
        per_split[s] = (paths, labels)
    return order, per_split, problems, other


def _scan_class_folders(where: Path, folders: dict, order, context: str, problems: list, other: list):
    """Image paths and labels of one `{class}/*` level, in class-list order.

    Missing or empty class folders are appended to `problems`, non-image files to `other`.
    """
    paths, labels = [], []
    for label, name in enumerate(order):
        folder = folders.get(name)
        if folder is None:
            problems.append(f"{where / name}: missing class folder (class {name!r} has no images{context})")
            continue
        files, rest = _class_files(folder)
        other += rest
        if not files:
            problems.append(f"{folder}: empty class (no image files)")
        paths += files
        labels += [label] * len(files)
    return paths, labels


def _scan_flat_tree(root: Path, classes):
    """Scan `{class}/*`; returns (classes, paths, labels, problems, other)."""
    problems, other = [], []
    folders = {d.name: d for d in _subdirs(root)}
    order = class_order(folders, classes)
    for n in folders:
        if n not in order:
            problems.append(f"{root}: class folder {n!r} is not in the class list {list(order)}")
    paths, labels = _scan_class_folders(root, folders, order, "", problems, other)
    return order, paths, labels, problems, other


def stratified_split(labels, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Indices of train/val/test, stratified 72/8/20 (each sorted): two `train_test_split` calls."""
    from sklearn.model_selection import train_test_split

    y = np.asarray(labels)
    idx = np.arange(len(y))
    trainval, test = train_test_split(idx, test_size=TEST_FRACTION, stratify=y, random_state=seed)
    train, val = train_test_split(trainval, test_size=VAL_FRACTION_OF_TRAINVAL, stratify=y[trainval],
                                  random_state=seed)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _looks_like_split_tree(root: Path) -> bool:
    return any((root / s).is_dir() for s in SPLITS)


def _not_a_classification_tree(root: Path) -> str | None:
    """Say what a folder is when it is clearly not a classification tree (a clearer error)."""
    if (root / "Annotations").is_dir() and (root / "JPEGImages").is_dir():
        return (f"{root}: a Pascal VOC detection set (Annotations/, JPEGImages/), not a classification "
                "data set; expected {class}/*.jpg or {train,val,test}/{class}/*.jpg")
    if not _subdirs(root) and any(p.suffix.lower() in IMAGE_SUFFIXES for p in root.iterdir()):
        return (f"{root}: images lie directly in the folder; a classification data set needs one folder "
                "per class ({class}/*.jpg or {train,val,test}/{class}/*.jpg)")
    return None


def _open_tree(root: Path, classes, strict: bool = True, required=SPLITS):
    explicit = _explicit_classes(classes, root)
    if not _looks_like_split_tree(root):
        what = _not_a_classification_tree(root)
        if what:
            raise DataError(what)
    if _looks_like_split_tree(root):
        order, per_split, problems, other = _scan_split_tree(root, explicit, required)
        splits = {s: SplitData(s, np.asarray(lb, np.int64), paths=tuple(p)) for s, (p, lb) in per_split.items()}
        kind, protocol = "tree", "official split"
    else:
        order, paths, labels, problems, other = _scan_flat_tree(root, explicit)
        kind, protocol, splits = "flat-tree", FLAT_PROTOCOL, {}
        if not paths and not problems:
            problems.append(f"{root}: no class folders with images (expected {{class}}/*.jpg or "
                            "{train,val,test}/{class}/*.jpg)")
        if paths and not problems:
            y = np.asarray(labels, np.int64)
            try:
                parts = stratified_split(y)
            except ValueError as exc:
                counts = dict(zip(order, np.bincount(y, minlength=len(order)).tolist()))
                raise DataError(f"{root}: cannot split 72/8/20 stratified ({exc}); images per class: {counts}") from None
            splits = {s: SplitData(s, y[ix], paths=tuple(paths[i] for i in ix)) for s, ix in parts.items()}
    if problems and strict:
        more = f" (and {len(problems) - 1} more problems; run `hemaedge data verify {root}`)" if len(problems) > 1 else ""
        raise DataError(problems[0] + more)
    ds = Dataset(root=root, kind=kind, classes=tuple(order), splits=splits, protocol=protocol,
                 name=root.name, ignored_files=tuple(other))
    return ds, problems


# ----------------------------------------------------------------------------- npz

def _npy_header(zf: zipfile.ZipFile, member: str, path: Path):
    """(shape, dtype) of an array in an npz without reading its data."""
    try:
        with zf.open(member) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: array '{member[:-4]}' is not a valid .npy array ({exc})") from None
    return shape, dtype


def _open_npz(path: Path, classes, strict: bool = True):
    problems: list[str] = []

    def bad(msg):
        if strict:
            raise DataError(f"{path}: {msg}")
        problems.append(f"{path}: {msg}")

    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    with zf:
        members = set(zf.namelist())
        found = {}
        for s in SPLITS:
            want = [f"{s}_images.npy", f"{s}_labels.npy"]
            missing = [m[:-4] for m in want if m not in members]
            if missing:
                bad(f"missing split {s!r} (no {' / '.join(repr(m) for m in missing)} array)")
                continue
            shape, dtype = _npy_header(zf, want[0], path)
            lshape, ldtype = _npy_header(zf, want[1], path)
            ok = True
            if dtype != np.uint8:
                bad(f"'{s}_images' has dtype {dtype}; expected uint8 (MedMNIST format)")
                ok = False
            if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
                bad(f"'{s}_images' has shape {shape}; expected (N, H, W) or (N, H, W, 3)")
                ok = False
            if not np.issubdtype(ldtype, np.integer):
                bad(f"'{s}_labels' has dtype {ldtype}; expected integer class labels")
                ok = False
            if len(lshape) == 2 and lshape[1] > 1:
                bad(f"'{s}_labels' has shape {lshape}: multi-label sets are not supported (need one label per image)")
                ok = False
            elif len(lshape) not in (1, 2):
                bad(f"'{s}_labels' has shape {lshape}; expected (N, 1)")
                ok = False
            if shape and lshape and shape[0] != lshape[0]:
                bad(f"'{s}_images' has {shape[0]} images but '{s}_labels' has {lshape[0]} labels")
                ok = False
            if ok:
                found[s] = shape
    labels = {}
    if found:
        try:
            with np.load(path, allow_pickle=False) as data:
                labels = {s: data[f"{s}_labels"].reshape(-1).astype(np.int64) for s in found}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise DataError(f"{path}: cannot read the label arrays ({exc})") from None
    mid = medmnist_id(path)
    explicit = _explicit_classes(classes, None)
    if explicit is not None:
        order = explicit
    elif mid is not None and mid[0] in MEDMNIST_CLASSES:
        order = MEDMNIST_CLASSES[mid[0]]
    else:
        top = max((int(lb.max()) for lb in labels.values() if lb.size), default=-1)
        order = tuple(f"class_{i}" for i in range(top + 1))
    for s, lb in labels.items():
        if lb.size and (lb.min() < 0 or lb.max() >= len(order)):
            bad(f"'{s}_labels' has labels outside 0..{len(order) - 1} (min {lb.min()}, max {lb.max()}) "
                f"for {len(order)} classes")
        if lb.size == 0:
            bad(f"split {s!r} is empty")
    splits = {s: SplitData(s, labels[s], npz=path, key=f"{s}_images", shape=tuple(found[s])) for s in found}
    ds = Dataset(root=path, kind="npz", classes=tuple(order), splits=splits, protocol="official split",
                 name=path.stem, expected_md5=MEDMNIST_MD5[mid[0]][mid[1]] if mid else None)
    return ds, problems


# ----------------------------------------------------------------------------- finding data


def _search_dirs(data_dir=None) -> list[Path]:
    dirs = [Path(data_dir).expanduser()] if data_dir else []
    if os.environ.get("HEMAEDGE_DATA"):
        dirs.append(Path(os.environ["HEMAEDGE_DATA"]).expanduser())
    dirs.append(cache_dir())
    return dirs


def find_dataset(name: str, data_dir=None) -> Path | None:
    """A local data set called `name` (a file, folder or `name.npz`), one level deep at most."""
    for base in _search_dirs(data_dir):
        if not base.is_dir():
            continue
        for cand in (base / name, base / f"{name}.npz"):
            if cand.exists():
                return cand
        for sub in _subdirs(base):
            cand = sub / f"{name}.npz"
            if cand.is_file():
                return cand
    return None


def _resolve(path_or_name, data_dir, download) -> Path:
    p = Path(str(path_or_name)).expanduser()
    if p.exists():
        return p
    name = str(path_or_name)
    if os.sep in name or "/" in name:
        raise DataError(f"{p}: no such file or folder")
    found = find_dataset(name, data_dir)
    if found is not None:
        return found
    mid = medmnist_id(name)
    if mid is not None and download:
        return download_medmnist(*mid)
    where = ", ".join(str(d) for d in _search_dirs(data_dir))
    hint = (f"; fetch it with `hemaedge data fetch {mid[0]} --size {mid[1]}` on an online machine"
            if mid else "")
    raise DataError(f"{name}: data set not found (looked in the current folder, {where}); pass a path "
                    f"or set HEMAEDGE_DATA to the folder holding it{hint}")


def _inspect(path_or_name, classes=None, data_dir=None, download=False, strict=True, required=SPLITS):
    path = _resolve(path_or_name, data_dir, download)
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise DataError(f"{path}: not a data set (expected a MedMNIST .npz file or an image folder tree)")
        return _open_npz(path, classes, strict)
    if not _looks_like_split_tree(path) and not _subdirs(path):
        npzs = sorted(path.glob("*.npz"))
        if len(npzs) == 1:
            return _open_npz(npzs[0], classes, strict)
    return _open_tree(path, classes, strict, required)


def open_dataset(path_or_name="bloodmnist", classes=None, data_dir=None, download: bool = False,
                 splits: Sequence[str] = SPLITS) -> Dataset:
    """Open a data set (see the module docstring); raises DataError naming the file and problem.

    `splits`: the split folders a tree must hold (an evaluation copy may hold only val/ and test/).
    """
    return _inspect(path_or_name, classes, data_dir, download, strict=True, required=tuple(splits))[0]
