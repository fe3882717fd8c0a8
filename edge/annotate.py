"""Optional visual output of a run: annotated images or a video, and a live preview window."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import cv2
import numpy as np

_COLOURS = {"wbc": (0, 200, 0), "platelet": (255, 140, 0)}
_REVIEW = (255, 0, 0)


def draw(image_rgb: np.ndarray, result, review_threshold: float) -> np.ndarray:
    """A copy of the frame (RGB) with each cell's box, class and confidence; red = review: the
    cell's review flag as cells.csv records it (so --review-level / --review-classes show), or,
    where the run gives none, a confidence below `review_threshold`."""
    out = image_rgb.copy()
    thick = max(1, round(min(out.shape[:2]) / 300))
    flags = list(getattr(result, "cell_flags", None) or [])
    if len(flags) != len(result.detections):
        flags = [None] * len(result.detections)
    for det, label, conf, flag in zip(result.detections, result.labels, result.confidences, flags):
        review = bool(flag) if flag is not None else conf < review_threshold
        colour = _REVIEW if review else _COLOURS.get(det.kind, (0, 200, 0))
        x0, y0, x1, y1 = det.box
        cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), colour, thick)
        text = label if conf != conf else f"{label} {conf:.2f}"  # NaN: not classified, or no platelet class
        cv2.putText(out, text, (x0 + 2, max(12, y0 - 4)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4 * thick, colour, thick, cv2.LINE_AA)
    return out


VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv")


def check_video_output(path, overwrite: bool = False) -> None:
    """Refuse, before a run starts, an annotated-video path that cannot be written: a folder, an
    existing file (unless `overwrite`), a suffix the mp4v writer cannot fill, an unwritable folder."""
    from hemaedge.edge.errors import OutputError

    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; name a video file (e.g. {path / 'annotated.mp4'})")
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise OutputError(f"{path}: an annotated video needs one of the suffixes {', '.join(VIDEO_SUFFIXES)}")
    if path.exists() and not overwrite:
        raise OutputError(f"{path}: already exists; choose a new name (or replace it with --force)")
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 64))
        ok = probe.isOpened()
        probe.release()
    except (OSError, cv2.error) as exc:
        raise OutputError(f"{path}: cannot write the annotated video ({exc}); choose a writable path") from None
    finally:
        if not existed and path.exists():
            path.unlink()
    if not ok:
        raise OutputError(f"{path}: cannot write the annotated video there (folder not writable, or no mp4v "
                          "encoder in this OpenCV); choose another path")


def check_image_dir(path, overwrite: bool = False) -> None:
    """Refuse, before a run starts, an annotated-frames folder that is a file, or that already
    holds files (their names would be reused) unless `overwrite`."""
    from hemaedge.edge.errors import OutputError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: is a file; name a folder for the annotated frames")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputError(f"{path}: already holds files that annotated frames of the same names would replace; "
                          "choose an empty folder (or allow it with --force or --append)")


class Annotator:
    """Writes annotated frames as JPEGs into a folder and/or as one video (mp4v)."""

    def __init__(self, review_threshold: float, image_dir=None, video_path=None, fps: float = 5.0):
        self.review_threshold = review_threshold
        self.image_dir = Path(image_dir) if image_dir else None
        self.video_path = Path(video_path) if video_path else None
        self.fps = fps
        self._writer = None
        self._size = None
        if self.image_dir:
            self.image_dir.mkdir(parents=True, exist_ok=True)

    def add(self, frame, result) -> None:
        bgr = cv2.cvtColor(draw(frame.image, result, self.review_threshold), cv2.COLOR_RGB2BGR)
        if self.image_dir:
            stem = Path(frame.name).stem.replace("#", "_")
            cv2.imwrite(str(self.image_dir / f"{frame.index:06d}_{stem}.jpg"), bgr)
        if self.video_path:
            if self._writer is None:
                self._size = (bgr.shape[1], bgr.shape[0])
                self.video_path.parent.mkdir(parents=True, exist_ok=True)
                self._writer = cv2.VideoWriter(str(self.video_path), cv2.VideoWriter_fourcc(*"mp4v"),
                                               self.fps, self._size)
            if (bgr.shape[1], bgr.shape[0]) != self._size:  # a video needs one frame size
                bgr = cv2.resize(bgr, self._size)
            self._writer.write(bgr)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None


def display_available() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class Preview:
    """A live window (needs a display and an OpenCV build with GUI support); 'q' or Esc quits."""

    WINDOW = "hemaedge"

    def __init__(self, review_threshold: float):
        self.review_threshold = review_threshold

    @staticmethod
    def open(review_threshold: float):
        """A Preview, or (None, reason) when no window can be shown here."""
        if not display_available():
            return None, "no display (DISPLAY/WAYLAND_DISPLAY unset)"
        try:
            cv2.namedWindow(Preview.WINDOW, cv2.WINDOW_NORMAL)
        except cv2.error:
            return None, "this OpenCV build has no GUI support (opencv-python-headless)"
        return Preview(review_threshold), None

    def show(self, frame, result) -> bool:
        cv2.imshow(self.WINDOW, cv2.cvtColor(draw(frame.image, result, self.review_threshold), cv2.COLOR_RGB2BGR))
        key = cv2.waitKey(1) & 0xFF
        return key not in (ord("q"), 27)

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.WINDOW)
        except cv2.error:
            pass
