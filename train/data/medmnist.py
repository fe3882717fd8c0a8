"""MedMNIST files: names, class lists, published md5 checksums, and verified downloads from Zenodo."""
from __future__ import annotations

import os
import re
from pathlib import Path

from hemaedge.edge.atomic import atomic_path
from hemaedge.edge.bundle import file_digest
from hemaedge.edge.errors import DataError
from hemaedge.edge.paths import cache_dir

CLASS_NAMES_BLOODMNIST = (
    "basophil", "eosinophil", "erythroblast", "immature_granulocyte",
    "lymphocyte", "monocyte", "neutrophil", "platelet",
)

# MedMNIST v2 / MedMNIST+ 2D sets on Zenodo: md5 per image size (28 is the file without suffix),
# as published in MedMNIST's own `info.py`.
MEDMNIST_BASE_URL = "https://zenodo.org/records/10519652/files"
MEDMNIST_MD5 = {
    "pathmnist": {28: "a8b06965200029087d5bd730944a56c1", 64: "55aa9c1e0525abe5a6b9d8343a507616",
                  128: "ac42d08fb904d92c244187169d1fd1d9", 224: "2c51a510bcdc9cf8ddb2af93af1eadec"},
    "chestmnist": {28: "02c8a6516a18b556561a56cbdd36c4a8", 64: "9de6cd0b934ebb5b7426cfba5efbae16",
                   128: "db107e5590b27930b62dbaf558aebee3", 224: "45bd33e6f06c3e8cdb481c74a89152aa"},
    "dermamnist": {28: "0744692d530f8e62ec473284d019b0c7", 64: "b70a2f5635c6199aeaa28c31d7202e1f",
                   128: "2defd784463fa5243564e855ed717de1", 224: "8974907d8e169bef5f5b96bc506ae45d"},
    "octmnist": {28: "c68d92d5b585d8d81f7112f81e2d0842", 64: "e229e9440236b774d9f0dfef9d07bdaf",
                 128: "0a97e76651ace45c5d943ee3f65b63ae", 224: "abc493b6d529d5de7569faaef2773ba3"},
    "pneumoniamnist": {28: "28209eda62fecd6e6a2d98b1501bb15f", 64: "8f4eceb4ccffa70c672198ea285246c6",
                       128: "05b46931834c231683c68f40c47b2971", 224: "d6a3c71de1b945ea11211b03746c1fe1"},
    "retinamnist": {28: "bd4c0672f1bba3e3a89f0e4e876791e4", 64: "afda852cc34dcda56f86ad2b2457dbcc",
                    128: "e48e916a24454daf90583d4e6efb1a18", 224: "eae7e3b6f3fcbda4ae613ebdcbe35348"},
    "breastmnist": {28: "750601b1f35ba3300ea97c75c52ff8f6", 64: "742edef2a1fd1524b2efff4bd7ba9364",
                    128: "363e4b3f8d712e9b5de15470a2aaadf1", 224: "b56378a6eefa9fed602bb16d192d4c8b"},
    "bloodmnist": {28: "7053d0359d879ad8a5505303e11de1dc", 64: "2b94928a2ae4916078ca51e05b6b800b",
                   128: "adace1e0ed228fccda1f39692059dd4c", 224: "b718ff6835fcbdb22ba9eacccd7b2601"},
    "tissuemnist": {28: "ebe78ee8b05294063de985d821c1c34b", 64: "123ece2eba09d0aa5d698fda57103344",
                    128: "61b955355d7425a89687b06cca3ce0c2", 224: "b077128c4a949f0a4eb01517f9037b9c"},
    "organamnist": {28: "68e3f8846a6bd62f0c9bf841c0d9eacc", 64: "2dcccc29b88e6da5a01161ef20cda288",
                    128: "eeae80d0a227a8d099027e1b3cfd3b60", 224: "50747347e05c87dd3aaf92c49f9f3170"},
    "organcmnist": {28: "b9ceb9546e10131b32923c5bbeaea2b1", 64: "3ce34a8724ea6f548e6db4744d03b6a9",
                    128: "773c1f009daa3fe5d9a2a201b2a7ed94", 224: "050f5e875dc056f6768abf94ec9995d1"},
    "organsmnist": {28: "9ab87b696fb54e2a387ebe992d6ed5f1", 64: "53a6d115339d874c25e309a994ff46d3",
                    128: "ded0c5fa01a95dc4978b956f613e9b8e", 224: "b354719e553fbbb2513d5533f52a4cb1"},
}
_ORGANS = ("bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
           "lung-left", "lung-right", "pancreas", "spleen")
MEDMNIST_CLASSES = {
    "bloodmnist": CLASS_NAMES_BLOODMNIST,
    "pathmnist": ("adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle",
                  "normal colon mucosa", "cancer-associated stroma",
                  "colorectal adenocarcinoma epithelium"),
    "dermamnist": ("actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                   "benign keratosis-like lesions", "dermatofibroma", "melanoma",
                   "melanocytic nevi", "vascular lesions"),
    "octmnist": ("choroidal neovascularization", "diabetic macular edema", "drusen", "normal"),
    "pneumoniamnist": ("normal", "pneumonia"),
    "retinamnist": ("0", "1", "2", "3", "4"),
    "breastmnist": ("malignant", "normal, benign"),
    "tissuemnist": ("Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule",
                    "Glomerular endothelial cells", "Interstitial endothelial cells", "Leukocytes",
                    "Podocytes", "Proximal Tubule Segments", "Thick Ascending Limb"),
    "organamnist": _ORGANS, "organcmnist": _ORGANS, "organsmnist": _ORGANS,
}


_MEDMNIST_NAME = re.compile(r"^([a-z]+mnist)(?:_(\d+))?$")


def medmnist_id(filename) -> tuple[str, int] | None:
    """`bloodmnist_128.npz` -> ("bloodmnist", 128); None for names MedMNIST does not publish."""
    stem = Path(str(filename)).name
    stem = stem[:-4] if stem.endswith(".npz") else stem
    m = _MEDMNIST_NAME.match(stem)
    if not m or m.group(1) not in MEDMNIST_MD5:
        return None
    size = int(m.group(2) or 28)
    return (m.group(1), size) if size in MEDMNIST_MD5[m.group(1)] else None


def md5sum(path) -> str:
    """The checksum MedMNIST publishes for its files."""
    return file_digest(path, "md5")


def medmnist_url(name: str, size: int = 28) -> str:
    """Zenodo URL of a MedMNIST 2D file; $HEMAEDGE_MEDMNIST_URL replaces the base (a mirror)."""
    if name not in MEDMNIST_MD5 or size not in MEDMNIST_MD5[name]:
        raise DataError(f"unknown MedMNIST file {name!r} at size {size}; known: {sorted(MEDMNIST_MD5)} "
                        "at sizes 28, 64, 128, 224")
    base = os.environ.get("HEMAEDGE_MEDMNIST_URL", MEDMNIST_BASE_URL).rstrip("/")
    suffix = "" if size == 28 else f"_{size}"
    return f"{base}/{name}{suffix}.npz?download=1" if base == MEDMNIST_BASE_URL else f"{base}/{name}{suffix}.npz"


def download_medmnist(name: str = "bloodmnist", size: int = 28, dest=None, progress: bool | None = None) -> Path:
    """Fetch a MedMNIST .npz into `dest` (default: the cache), check its md5, return its path.

    An existing file with the right md5 is reused; the download lands in a temporary file that
    is renamed only after the md5 matches, so a broken transfer never looks like data.
    """
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    url = medmnist_url(name, size)
    expected = MEDMNIST_MD5[name][size]
    dest = Path(dest) if dest else cache_dir()
    target = dest / (f"{name}.npz" if size == 28 else f"{name}_{size}.npz")
    if target.is_file() and md5sum(target) == expected:
        return target
    try:
        with atomic_path(target) as tmp:  # a bad or partial download never appears under the real name
            with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
                total = int(resp.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=target.name,
                          disable=None if progress is None else not progress) as bar:
                    for block in iter(lambda: resp.read(1 << 20), b""):
                        out.write(block)
                        bar.update(len(block))
            got = md5sum(tmp)
            if got != expected:
                raise DataError(f"{url}: md5 {got} does not match the published {expected}; file discarded")
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"{url}: download failed ({getattr(exc, 'reason', None) or exc}); on an offline "
                        f"machine pass a local path or set HEMAEDGE_DATA to a folder holding {target.name}") from None
    return target
