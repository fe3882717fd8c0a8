"""`edge run` on inputs from microscopes and cameras we have not seen (issues #12, #13).

    python -m hemaedge.benchmarks.tools.input_robustness --data ../shared/data/bccd \\
        --pbc ../shared/data/pbc_raw_val [--bccd-frames 24] [--pbc-fields 16] [--bundle B] [--out benchmarks/results]

Real frames (the first BCCD **val** frames, and PBC fields spread over pbc_raw_val) are made into
the kinds of input other labs produce (each variant one row: another objective or camera
resolution, a wide or a phone camera frame, other file formats and bit depths, a camera that
sends BGR, another white balance or exposure, rotated and EXIF-rotated files, a video, a folder
with broken files), written to a temporary folder, and run through the real `hemaedge edge run`
command in-process (the same code the CLI runs: `click.testing.CliRunner`, one run per variant
and data set). The run's cells.csv, frames.csv and summary.json are then scored against the
truth transformed the same way as the pixels:

* BCCD: every nucleated (`wbc`) detection against the VOC WBC boxes, one-to-one (recall and
  precision at IoU >= 0.5, `segmentation_bccd.matches`; also centre-in-box); nucleated count
  exact per frame; confirmed platelets per frame against the VOC platelet boxes per frame; the
  class of the detection matched to the box of a frame with one labelled white cell
  (wbc_subtypes.csv) against its label;
* PBC: the labelled centre cell found (a nucleated detection whose box holds the field's
  centre, `pbc_end_to_end`'s rule) and its class against the label (platelet fields are left
  out of both: their centre cell is a platelet);
* the ruler: the median red-cell diameter `edge run` used (frames.csv `rbc_px`) divided by the
  as-is frames' median times the variant's scale (1.00 = the magnification read right);
* the domain warning (summary.json `domain.warning`) and the input warnings
  (summary.json `input.warnings`).

Results: OUT/input_robustness.{md,json} (`result_files.write_result`).
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import math
import shutil
import struct
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import click
import cv2
import numpy as np
from tqdm import tqdm

from hemaedge.benchmarks.tools.bccd_wbc import frames as bccd_wbc_frames
from hemaedge.benchmarks.tools.result_files import write_result
from hemaedge.benchmarks.tools.segmentation_bccd import frame_ids, machine, matches, read_voc
from hemaedge.edge.preprocess import read_image_rgb
from hemaedge.edge.segment import centre_in

RESULTS = Path(__file__).resolve().parents[1] / "results"
CLASS_ALIASES = {"ig": "immature_granulocyte"}

# ----------------------------------------------------------------------------- geometry of a variant


@dataclass(frozen=True)
class Geometry:
    """Where a pixel (x, y) of the original frame lands in the variant: scaled by `scale`, then
    shifted by (dx, dy) (letterbox bars, a crop), on a canvas of `size` (w, h); `rot90` = turned
    90 degrees clockwise after that."""

    scale: float = 1.0
    dx: float = 0.0
    dy: float = 0.0
    size: tuple[int, int] | None = None
    rot90: bool = False
    circle: tuple[float, float, float] | None = None  # (cx, cy, r): only this disc of the canvas is seen


    def box(self, b):
        x0, y0, x1, y1 = (b[0] * self.scale + self.dx, b[1] * self.scale + self.dy,
                          b[2] * self.scale + self.dx, b[3] * self.scale + self.dy)
        if self.size is not None:
            w, h = self.size
            x0, x1 = max(0.0, x0), min(float(w), x1)
            y0, y1 = max(0.0, y0), min(float(h), y1)
            if x1 - x0 < 2 or y1 - y0 < 2:
                return None  # cropped away
        if self.circle is not None:
            cx, cy, r = self.circle
            if math.hypot((x0 + x1) / 2 - cx, (y0 + y1) / 2 - cy) > r:
                return None  # outside the eyepiece's field
        if self.rot90:  # clockwise: (x, y) -> (H - y, x) on the (pre-rotation) canvas of height H
            h = self.size[1]
            x0, y0, x1, y1 = h - y1, x0, h - y0, x1
        return tuple(int(round(v)) for v in (x0, y0, x1, y1))

    def point(self, x, y):
        x, y = x * self.scale + self.dx, y * self.scale + self.dy
        return (self.size[1] - y, x) if self.rot90 else (x, y)


def _resize(img, scale):
    h, w = img.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def _jpeg(img_rgb, quality=95) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def _png(img_native) -> bytes:
    """PNG of an array in OpenCV's channel order (BGR / BGRA / grey), any depth."""
    ok, buf = cv2.imencode(".png", img_native)
    assert ok
    return buf.tobytes()


def exif_orientation_app1(orientation: int) -> bytes:
    """A minimal EXIF APP1 segment holding only the orientation tag (0x0112)."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + \
        struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    body = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + exif_orientation_app1(orientation) + jpeg[2:]


def _gamma(img, g):
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** g + 0.5, 0, 255).astype(np.uint8)
    return lut[img]


def _white_balance(img, r, b):
    out = img.astype(np.float32)
    out[..., 0] *= r
    out[..., 2] *= b
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _letterbox(img, width, height):
    """Scaled to fit width x height (aspect kept), black bars on the other axis."""
    h, w = img.shape[:2]
    s = min(width / w, height / h)
    small = _resize(img, s)
    canvas = np.zeros((height, width, 3), np.uint8)
    dy, dx = (height - small.shape[0]) // 2, (width - small.shape[1]) // 2
    canvas[dy:dy + small.shape[0], dx:dx + small.shape[1]] = small
    return canvas, Geometry(small.shape[1] / w, dx, dy, (width, height))


def _fill_crop(img, width, height):
    """Scaled to fill width x height (aspect kept), the overflow cropped off centrally."""
    h, w = img.shape[:2]
    s = max(width / w, height / h)
    big = _resize(img, s)
    dy, dx = (big.shape[0] - height) // 2, (big.shape[1] - width) // 2
    return np.ascontiguousarray(big[dy:dy + height, dx:dx + width]), Geometry(big.shape[1] / w, -dx, -dy, (width, height))


def _eyepiece(raw, img):
    """A phone held to the eyepiece: the field is a disc (radius 0.6 x the frame width), black around it."""
    h, w = img.shape[:2]
    r = 0.6 * w
    yy, xx = np.mgrid[0:h, 0:w]
    out = img.copy()
    out[np.hypot(xx - w / 2, yy - h / 2) > r] = 0
    return _jpeg(out), ".jpg", Geometry(1.0, 0, 0, (w, h), circle=(w / 2, h / 2, r))


def _identity(img):
    return Geometry(1.0, 0, 0, (img.shape[1], img.shape[0]))


# A variant: name, what it is, and a function (original file bytes, RGB pixels) -> (file bytes,
# extension, geometry). kind "video" / "folder" are assembled after the frames.
@dataclass(frozen=True)
class Variant:
    name: str
    about: str
    make: Callable | None = None
    kind: str = "images"
    args: tuple = ()  # extra `edge run` options


def _scaled(s):
    def make(raw, img):
        out = _resize(img, s)
        return _jpeg(out), ".jpg", Geometry(out.shape[1] / img.shape[1], 0, 0, (out.shape[1], out.shape[0]))
    return make


def _recoded(fn, ext=".jpg"):
    def make(raw, img):
        return fn(img), ext, _identity(img)
    return make


def _camera(fit, w, h):
    def make(raw, img):
        out, geo = fit(img, w, h)
        return _jpeg(out), ".jpg", geo
    return make


def _rotated(raw, img):
    out = np.ascontiguousarray(np.rot90(img, k=-1))  # clockwise
    return _jpeg(out), ".jpg", Geometry(1.0, 0, 0, (img.shape[1], img.shape[0]), rot90=True)


def _exif_rotated(raw, img):
    # pixels stored turned 90 degrees anticlockwise; orientation 6 tells a viewer to turn them clockwise
    # back upright: a reader that honours EXIF sees the original frame
    stored = np.ascontiguousarray(np.rot90(img, k=1))
    return with_exif_orientation(_jpeg(stored), 6), ".jpg", _identity(img)


VARIANTS = [
    Variant("as-is", "the data set's own JPEG files, unchanged", lambda raw, img: (raw, ".jpg", _identity(img))),
    Variant("x0.5", "rescaled x0.5 (area), JPEG q95: a lower-power objective or a smaller camera", _scaled(0.5)),
    Variant("x0.75", "rescaled x0.75, JPEG q95", _scaled(0.75)),
    Variant("x1.5", "rescaled x1.5 (bicubic), JPEG q95", _scaled(1.5)),
    Variant("x2", "rescaled x2 (bicubic), JPEG q95: a higher-resolution camera", _scaled(2.0)),
    Variant("1920x1080 letterboxed", "scaled to 1080 rows, black bars left and right (a 16:9 camera)",
            _camera(_letterbox, 1920, 1080)),
    Variant("4032x3024 cropped", "scaled to fill 4032x3024 and centre-cropped (a phone camera)",
            _camera(_fill_crop, 4032, 3024)),
    Variant("eyepiece disc", "black outside a disc of radius 0.6 x the frame width (a phone held to the "
                             "eyepiece: dark corners), JPEG q95", _eyepiece),
    Variant("JPEG q25", "re-encoded JPEG quality 25", _recoded(lambda img: _jpeg(img, 25))),
    Variant("PNG", "8-bit RGB PNG", _recoded(lambda img: _png(cv2.cvtColor(img, cv2.COLOR_RGB2BGR)), ".png")),
    Variant("16-bit PNG", "16-bit PNG, full range (value x 257)",
            _recoded(lambda img: _png(cv2.cvtColor(img, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257), ".png")),
    Variant("16-bit PNG of 12-bit data", "16-bit PNG holding 12-bit camera data (value x 16, max 4080)",
            _recoded(lambda img: _png(cv2.cvtColor(img, cv2.COLOR_RGB2BGR).astype(np.uint16) * 16), ".png")),
    Variant("RGBA PNG", "8-bit PNG with an opaque alpha channel",
            _recoded(lambda img: _png(cv2.cvtColor(img, cv2.COLOR_RGB2BGRA)), ".png")),
    Variant("grayscale JPEG", "one-channel JPEG (a monochrome camera)",
            _recoded(lambda img: cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2GRAY),
                                              [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes())),
    Variant("BGR-swapped", "red and blue swapped (a camera that sends BGR, saved as if RGB), JPEG q95",
            _recoded(lambda img: _jpeg(np.ascontiguousarray(img[..., ::-1])))),
    Variant("BGR-swapped run with --swap-red-blue", "the BGR-swapped files run with `edge run --swap-red-blue`",
            _recoded(lambda img: _jpeg(np.ascontiguousarray(img[..., ::-1]))), args=("--swap-red-blue",)),
    Variant("warm white balance", "red x1.15, blue x0.85, JPEG q95",
            _recoded(lambda img: _jpeg(_white_balance(img, 1.15, 0.85)))),
    Variant("cold white balance", "red x0.85, blue x1.15, JPEG q95",
            _recoded(lambda img: _jpeg(_white_balance(img, 0.85, 1.15)))),
    Variant("gamma 0.6 (overexposed)", "pixel^0.6 (brighter), JPEG q95", _recoded(lambda img: _jpeg(_gamma(img, 0.6)))),
    Variant("gamma 1.6 (underexposed)", "pixel^1.6 (darker), JPEG q95", _recoded(lambda img: _jpeg(_gamma(img, 1.6)))),
    Variant("rotated 90", "pixels turned 90 degrees clockwise, JPEG q95", _rotated),
    Variant("EXIF-rotated JPEG", "pixels stored turned 90 degrees anticlockwise with EXIF orientation 6 "
                                 "(a phone): upright when the orientation is honoured", _exif_rotated),
    Variant("video (mp4v)", "the stills as the frames of one .mp4 (mp4v, 1 frame per still)", kind="video"),
    Variant("folder with broken files", "the as-is files plus a truncated JPEG (first 60% of a frame), a "
                                        "zero-byte .jpg and a text file named .jpg", kind="folder"),
]

# ----------------------------------------------------------------------------- the data


@dataclass
class Still:
    name: str  # file stem
    path: Path
    kind: str  # "bccd" | "pbc"
    boxes: dict  # VOC name -> boxes (bccd)
    label: str | None  # the white cell's type (bccd: frames with one label; pbc: the field's class)


def bccd_stills(data: Path, n: int) -> list[Still]:
    # the val frames with one labelled white cell and one WBC box (bccd_wbc's reader)
    labels = {row["frame"]: row["categories"].strip() for row in bccd_wbc_frames(data, "val")}
    out = []
    for fid in frame_ids(data, "val")[:n]:
        jpg = data / "JPEGImages" / f"{fid}.jpg"
        if jpg.exists():
            out.append(Still(fid, jpg, "bccd", read_voc(data / "Annotations" / f"{fid}.xml"), labels.get(fid)))
    return out


def pbc_stills(pbc: Path, n: int) -> list[Still]:
    with open(pbc / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    idx = np.linspace(0, len(rows) - 1, n).round().astype(int) if n < len(rows) else range(len(rows))
    return [Still(Path(rows[i]["file"]).stem, pbc / rows[i]["file"], "pbc", {}, rows[i]["class"]) for i in idx]


# ----------------------------------------------------------------------------- writing a variant


def write_variant(v: Variant, stills: list[Still], folder: Path) -> tuple[str, list[tuple[str, Still, Geometry]]]:
    """The variant's source (a folder or a video file) and, per frame in source order, (the name
    `edge run` gives it, the still, its geometry)."""
    folder.mkdir(parents=True, exist_ok=True)
    frames = []
    if v.kind == "video":
        first = read_image_rgb(stills[0].path)
        h, w = first.shape[:2]
        w, h = w - w % 2, h - h % 2  # even sides for the codec
        path = folder / f"{stills[0].kind}.mp4"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 1.0, (w, h))
        if not writer.isOpened():
            raise click.ClickException("OpenCV here cannot write mp4v video")
        for i, s in enumerate(stills):
            img = read_image_rgb(s.path)
            if img.shape[:2] != (h, w):  # PBC fields vary a little in size: pad / crop to the first one's
                canvas = np.full((h, w, 3), 255, np.uint8)
                hh, ww = min(h, img.shape[0]), min(w, img.shape[1])
                canvas[:hh, :ww] = img[:hh, :ww]
                img = canvas
            writer.write(cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            frames.append((f"{path.name}#{i}", s, Geometry(1.0, 0, 0, (w, h))))
        writer.release()
        return str(path), frames
    make = VARIANTS[0].make if v.kind == "folder" else v.make
    for s in stills:
        raw = s.path.read_bytes()
        img = read_image_rgb(s.path)
        data, ext, geo = make(raw, img)
        name = f"{s.name}{ext}"
        (folder / name).write_bytes(data)
        frames.append((name, s, geo))
    if v.kind == "folder":
        raw = stills[0].path.read_bytes()
        (folder / "zz_truncated.jpg").write_bytes(raw[: int(len(raw) * 0.6)])
        (folder / "zz_empty.jpg").write_bytes(b"")
        (folder / "zz_notes.jpg").write_text("microscope notes, saved with the wrong extension\n")
    frames.sort(key=lambda t: t[0])
    return str(folder), frames


def run_edge(source: str, out: Path, bundle: Path | None, threads: int, extra=()) -> dict:
    """The real `hemaedge edge run` on `source`; (exit code, output, summary or None)."""
    from click.testing import CliRunner

    from hemaedge.cli import main

    args = ["edge", "run", "-q", "--source", source, "--out", str(out), "--threads", str(threads), "--force", *extra]
    if bundle:
        args += ["--bundle", str(bundle)]
    res = CliRunner().invoke(main, args)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else None
    crash = None
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        crash = f"{type(res.exception).__name__}: {res.exception}"
    return {"exit_code": res.exit_code, "output_tail": res.output[-2000:], "summary": summary, "crash": crash}


def _read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _norm(c: str | None) -> str | None:
    if c is None:
        return None
    c = c.strip().lower().replace(" ", "_").replace("-", "_")
    return CLASS_ALIASES.get(c, c)


def score(frames: list[tuple[str, Still, Geometry]], out: Path) -> dict:
    """Score one `edge run` folder against the transformed truth."""
    cells = _read_csv(out / "cells.csv")
    rows = _read_csv(out / "frames.csv")
    by_name: dict[str, list[dict]] = {}
    for c in cells:
        by_name.setdefault(c["name"], []).append(c)
    read = {r["name"]: r for r in rows}
    s = {"frames": len(frames), "read": 0, "wbc_gt": 0, "wbc_pred": 0, "tp_iou": 0, "tp_centre": 0, "exact": 0,
         "bccd_frames": 0, "plt_gt": 0, "plt_found": 0, "plt_tp": 0, "class_n": 0, "class_ok": 0, "pbc_class_n": 0, "pbc_class_ok": 0,
         "pbc_fields": 0, "pbc_found": 0, "rbc_px": [], "top": Counter()}
    for name, still, geo in frames:
        if name not in read:
            continue
        s["read"] += 1
        if read[name].get("rbc_px"):
            s["rbc_px"].append((float(read[name]["rbc_px"]), still, geo.scale))
        dets = by_name.get(name, [])
        wbc = [d for d in dets if d["kind"] == "wbc"]
        boxes = [_box(d) for d in wbc]
        for d in wbc:
            if d["class"] not in ("unidentified", "platelet", "not classified"):
                s["top"][d["class"]] += 1
        if still.kind == "bccd":
            s["bccd_frames"] += 1
            gt = [b for b in (geo.box(b) for b in still.boxes.get("WBC", [])) if b is not None]
            s["wbc_gt"] += len(gt)
            s["wbc_pred"] += len(boxes)
            hit = matches(boxes, gt, "iou")
            s["tp_iou"] += len(hit)
            s["tp_centre"] += len(matches(boxes, gt, "centre"))
            s["exact"] += len(boxes) == len(gt)
            pgt = [b for b in (geo.box(b) for b in still.boxes.get("Platelets", [])) if b is not None]
            # whole cells, as the run counts them: a detection cut by the frame edge is not
            # classified, and the box it matches is neither found nor missed
            plt = [_box(d) for d in dets if d["kind"] == "platelet" and d["class"] == "platelet" and d["at_edge"] != "1"]
            cut = [_box(d) for d in dets if d["kind"] == "platelet" and d["at_edge"] == "1"]
            pgt = [b for j, b in enumerate(pgt) if j not in set(matches(cut, pgt, "iou30").values())]
            s["plt_gt"] += len(pgt)
            s["plt_found"] += len(plt)
            s["plt_tp"] += len(matches(plt, pgt, "iou30"))
            if still.label and len(gt) == 1:
                cent = matches(boxes, gt, "centre")
                if cent and wbc[next(iter(cent))]["at_edge"] == "1":
                    pass  # cut by the frame edge: the run neither classifies nor counts it
                else:
                    s["class_n"] += 1
                    if cent:
                        i = next(iter(cent))
                        s["class_ok"] += _norm(wbc[i]["class"]) == _norm(still.label)
        else:
            if _norm(still.label) == "platelet":
                continue
            s["pbc_fields"] += 1
            cx, cy = geo.point(*still_centre(still))
            inside = [i for i, b in enumerate(boxes) if centre_in(b, (cx, cy))]
            if inside:
                s["pbc_found"] += 1
                i = min(inside, key=lambda i: math.hypot((boxes[i][0] + boxes[i][2]) / 2 - cx,
                                                       (boxes[i][1] + boxes[i][3]) / 2 - cy))
                s["pbc_class_ok"] += _norm(wbc[i]["class"]) == _norm(still.label)
            s["pbc_class_n"] += 1
    return s


def _box(cell: dict) -> tuple[int, int, int, int]:
    return tuple(int(cell[k]) for k in ("x0", "y0", "x1", "y1"))


_SHAPES: dict[Path, tuple[int, int]] = {}


def still_centre(still: Still) -> tuple[float, float]:
    if still.path not in _SHAPES:
        _SHAPES[still.path] = read_image_rgb(still.path).shape[:2]
    h, w = _SHAPES[still.path]
    return w / 2, h / 2


def _merge(parts: list[dict]) -> dict:
    out = {}
    for p in parts:
        for k, v in p.items():
            if isinstance(v, Counter):
                out.setdefault(k, Counter()).update(v)
            elif isinstance(v, list):
                out.setdefault(k, []).extend(v)
            else:
                out[k] = out.get(k, 0) + v
    return out


def _ratio(a, b):
    return round(a / b, 4) if b else None


def row_for(v: Variant, runs: list[dict], parts: list[dict], reference: dict) -> dict:
    s = _merge(parts)
    skipped = sum((r["summary"] or {}).get("frames_skipped", 0) for r in runs)
    # why frames were skipped: the reason after the file name, counted
    why = Counter(x.split(": ", 1)[1].removeprefix("not a readable image: ") if ": " in x else x
                  for r in runs for x in ((r["summary"] or {}).get("skip_reasons") or []))
    reasons = [f"{k} {n}" for k, n in why.items()]
    # ruler: this variant's diameter per still / (as-is diameter of that still x the variant's scale)
    ratios = [d / (reference[st.path] * sc) for d, st, sc in s.get("rbc_px", []) if reference.get(st.path)]
    warnings = [w for r in runs for w in ((r["summary"] or {}).get("input") or {}).get("warnings", [])]
    domain = {kind: bool(((r["summary"] or {}).get("domain") or {}).get("warning")) for kind, r in zip(("bccd", "pbc"), runs)}
    top = s.get("top", Counter())
    total_top = sum(top.values())
    return {
        "variant": v.name, "about": v.about,
        "exit_codes": [r["exit_code"] for r in runs], "crashes": [r["crash"] for r in runs if r["crash"]],
        "frames": s.get("frames", 0), "read": s.get("read", 0), "skipped": skipped, "skip_reasons": reasons,
        "skip_examples": [x for r in runs for x in ((r["summary"] or {}).get("skip_reasons") or [])][:5],
        "bccd_frames": s.get("bccd_frames", 0),
        "wbc_gt": s.get("wbc_gt", 0), "wbc_detected": s.get("wbc_pred", 0),
        "wbc_recall_iou": _ratio(s.get("tp_iou", 0), s.get("wbc_gt", 0)),
        "wbc_precision_iou": _ratio(s.get("tp_iou", 0), s.get("wbc_pred", 0)),
        "wbc_recall_centre": _ratio(s.get("tp_centre", 0), s.get("wbc_gt", 0)),
        "nucleated_count_exact": _ratio(s.get("exact", 0), s.get("bccd_frames", 0)),
        "platelets_per_frame": _ratio(s.get("plt_found", 0), s.get("bccd_frames", 0)),
        "platelets_true_per_frame": _ratio(s.get("plt_gt", 0), s.get("bccd_frames", 0)),
        "platelet_recall_iou30": _ratio(s.get("plt_tp", 0), s.get("plt_gt", 0)),
        "pbc_fields": s.get("pbc_fields", 0), "pbc_centre_found": _ratio(s.get("pbc_found", 0), s.get("pbc_fields", 0)),
        "class_agreement": _ratio(s.get("class_ok", 0), s.get("class_n", 0)), "class_n": s.get("class_n", 0),
        "pbc_class_agreement": _ratio(s.get("pbc_class_ok", 0), s.get("pbc_class_n", 0)),
        "ruler_ratio_median": round(float(np.median(ratios)), 3) if ratios else None,
        "ruler_frames_measured": len(ratios),
        "domain_warning": domain,
        "input_warnings": sorted(set(warnings)),
        "top_classes": [[c, round(n / total_top, 3)] for c, n in top.most_common(3)] if total_top else [],
        # per run (BCCD, PBC): the median frame's whole time in edge run, capture (decode) included
        "total_ms_p50": [(((r["summary"] or {}).get("latency_ms") or {}).get("total") or {}).get("p50") for r in runs],
    }


def to_markdown(r: dict) -> str:
    f = lambda v: "–" if v is None else f"{100 * v:.1f}%"
    g = lambda v: "–" if v is None else f"{v:.2f}"
    lines = [f"# `edge run` on inputs from other microscopes and cameras ({r['date']})", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}  ", f"Bundle: {r['bundle']}  ",
             f"Frames: {r['bccd_frames']} BCCD val frames (first of the split) and {r['pbc_fields']} PBC fields "
             f"(spread over pbc_raw_val) per variant, each set one `edge run` (in-process, the CLI's code).", "",
             "WBC recall / precision: every nucleated detection against the VOC WBC boxes (moved with the pixels), "
             "one-to-one at IoU ≥ 0.5; centre = centre-in-box recall. Exact = BCCD frames whose number of nucleated "
             "detections equals the boxes'. Platelets: whole platelets classified platelet per BCCD frame (truth: VOC "
             "boxes per frame, less those matching a detection cut by the frame edge, which the run neither "
             "classifies nor counts) and recall at IoU ≥ 0.3. PBC found: the labelled centre cell inside a nucleated "
             "detection (platelet fields left out). Class BCCD / PBC: the class of the matched white cell against its "
             "label (BCCD frames with one labelled white cell, less those whose cell is cut by the frame edge: another "
             "microscope than the training data / the PBC fields: the training microscope; a miss counts as wrong). "
             "Ruler: median of "
             "(red-cell diameter `edge run` used) / (the as-is diameter of that frame x the variant's scale): "
             "1.00 = the magnification read right. Domain warning: the run's summary.json raised it (BCCD run / PBC "
             "run; BCCD is another microscope than the training data, so its as-is run raises it too). Input "
             "warnings: summary.json `input.warnings` (first words; the whole text in the JSON). ms / frame: the median "
             "frame's whole time in `edge run`, decoding included (wall-clock on a shared machine: noisy). Top classes: the "
             "classes of the classified white cells (all nucleated detections but unidentified ones); the labels of "
             "these frames: " + ", ".join(f"{c} {100 * p:.0f}%" for c, p in r.get("label_classes", [])) + ".", "",
             "| variant | read / frames | skipped (reasons) | WBC recall | WBC precision | recall centre | exact | "
             "platelets / frame (truth) | platelet recall | PBC found | class BCCD / PBC | ruler | domain warning BCCD / PBC | input warnings | top classes | ms / frame BCCD / PBC |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        skipped = f"{x['skipped']}" + (f" ({'; '.join(x['skip_reasons'])})" if x["skip_reasons"] else "")
        if x["crashes"]:
            skipped += f" CRASH: {'; '.join(x['crashes'])}"
        top = ", ".join(f"{c} {100 * p:.0f}%" for c, p in x["top_classes"]) or "–"
        lines.append(f"| {x['variant']} | {x['read']} / {x['frames']} | {skipped} | {f(x['wbc_recall_iou'])} | "
                     f"{f(x['wbc_precision_iou'])} | {f(x['wbc_recall_centre'])} | {f(x['nucleated_count_exact'])} | "
                     f"{g(x['platelets_per_frame'])} ({g(x['platelets_true_per_frame'])}) | {f(x['platelet_recall_iou30'])} | "
                     f"{f(x['pbc_centre_found'])} | {f(x['class_agreement'])} / {f(x['pbc_class_agreement'])} | {g(x['ruler_ratio_median'])} | "
                     f"{' / '.join('yes' if x['domain_warning'].get(k) else 'no' for k in ('bccd', 'pbc'))} | {'<br>'.join(sorted({w.split(':')[0].split(' (')[0] for w in x['input_warnings']})) or '–'} | {top} | {' / '.join('–' if v is None else f'{v:.0f}' for v in x.get('total_ms_p50', []))} |")
    lines += ["", "Variants:", ""] + [f"- **{x['variant']}**: {x['about']}" for x in r["rows"]]
    return "\n".join(lines) + "\n"


def bundle_name(bundle: Path | None) -> str:
    from hemaedge.benchmarks.tools.live_feed import bundle_label

    return bundle_label(bundle)


@click.command()
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="BCCD folder (JPEGImages/, Annotations/, ImageSets/Main/, wbc_subtypes.csv); its val split is used.")
@click.option("--pbc", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="pbc_raw_val folder (fields + labels.csv).")
@click.option("--bccd-frames", default=24, show_default=True, type=click.IntRange(1), help="First N BCCD val frames.")
@click.option("--pbc-fields", default=16, show_default=True, type=click.IntRange(1), help="N PBC fields spread evenly.")
@click.option("--bundle", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Bundle to run (default: what `edge run` picks, the packaged default).")
@click.option("--only", help="Variant names joined by commas (quick check); as-is always runs (the ruler's reference).")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1, 64))
@click.option("--work", type=click.Path(file_okay=False, path_type=Path),
              help="Keep the variants' files and run folders here (default: a temporary folder, removed).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=RESULTS, show_default="benchmarks/results")
def main(data, pbc, bccd_frames, pbc_fields, bundle, only, threads, work, out):
    """Run `edge run` on real frames made into other labs' inputs; one row per variant."""
    import logging

    logging.getLogger("hemaedge").setLevel(logging.ERROR)  # the runs' warnings are read from their summaries
    variants = VARIANTS
    if only:
        names = {n.strip() for n in only.split(",")}
        unknown = names - {v.name for v in VARIANTS}
        if unknown:
            raise click.UsageError(f"unknown variant(s) {sorted(unknown)}; known: {[v.name for v in VARIANTS]}")
        variants = [v for v in VARIANTS if v.name in names or v.name == "as-is"]
    sets = {"bccd": bccd_stills(data, bccd_frames), "pbc": pbc_stills(pbc, pbc_fields)}
    tmp = Path(tempfile.mkdtemp(prefix="input-robustness-")) if work is None else work
    command = (f"python -m hemaedge.benchmarks.tools.input_robustness --data {data} --pbc {pbc} --bccd-frames {bccd_frames} "
               f"--pbc-fields {pbc_fields} --threads {threads}" + (f" --bundle {bundle}" if bundle else "")
               + (f" --only '{only}'" if only else ""))
    report = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="minutes"), "machine": machine(),
              "command": command, "bundle": bundle_name(bundle), "bccd_frames": len(sets["bccd"]),
              "pbc_fields": len(sets["pbc"]), "rows": []}
    labels = Counter(_norm(st.label) for st in sets["bccd"] + sets["pbc"] if st.label and _norm(st.label) != "platelet")
    report["label_classes"] = [[c, round(n / sum(labels.values()), 3)] for c, n in labels.most_common(4)]
    reference: dict[Path, float] = {}
    t0 = time.perf_counter()
    try:
        for v in tqdm(variants, desc="variants", unit="variant"):
            runs, parts = [], []
            for kind, stills in sets.items():
                vdir = tmp / v.name.replace(" ", "_").replace("/", "_") / kind
                source, frames = write_variant(v, stills, vdir / "input")
                r = run_edge(source, vdir / "run", bundle, threads, v.args)
                runs.append(r)
                parts.append(score(frames, vdir / "run"))
                if v.name == "as-is":
                    for name, st, geo in frames:
                        fr = {x["name"]: x for x in _read_csv(vdir / "run" / "frames.csv")}.get(name)
                        if fr and fr.get("rbc_px"):
                            reference[st.path] = float(fr["rbc_px"])
            row = row_for(v, runs, parts, reference)
            report["rows"].append(row)
            tqdm.write(f"{v.name}: read {row['read']}/{row['frames']}, skipped {row['skipped']}, WBC recall "
                       f"{row['wbc_recall_iou']}, PBC found {row['pbc_centre_found']}, class {row['class_agreement']} / {row['pbc_class_agreement']}, "
                       f"ruler {row['ruler_ratio_median']}, warnings {row['input_warnings']}"
                       + (f" CRASH {row['crashes']}" if row["crashes"] else ""))
    finally:
        if work is None:
            shutil.rmtree(tmp, ignore_errors=True)
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    json_path, md_path = write_result(Path(out) / "input_robustness", report, to_markdown(report))
    click.echo(f"wrote {md_path} and {json_path} ({report['wall_s']} s)")


if __name__ == "__main__":
    main()
