"""Frame sources behind one interface: every source yields `Frame`s of uint8 RGB pixels.

* image file, folder or glob (`ImageSource`): unreadable files are skipped and counted;
* video file (`VideoSource`, OpenCV);
* camera: a V4L2/USB index ("0"), a device path (/dev/video0) or a GStreamer pipeline string
  (the Jetson CSI camera, "nvarguscamerasrc ! ... ! appsink") through OpenCV (`CameraSource`);
  a camera that stops delivering frames is retried with backoff, then the source ends cleanly;
* Raspberry Pi camera through picamera2 (`PiCameraSource`; its "RGB888" format arrives in
  BGR byte order, so frames are converted as BGR).

Both live cameras count failures and wait through one shared `RetryBackoff`.

`open_source(spec, ...)` picks the right one from a string. `--fps` and `--max-frames` limits
are applied by `limit()` around any source.
"""
from __future__ import annotations

import glob as _glob
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from hemaedge.edge.cli_support import UserError
from hemaedge.edge.preprocess import FrameFormatError, read_image_rgb, to_rgb_uint8

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".webm"}


@dataclass
class Frame:
    index: int  # position in the stream, counting skipped frames too
    image: np.ndarray  # uint8 RGB (H, W, 3)
    name: str  # file name, or "<source>#<index>"
    capture_s: float  # seconds spent getting and converting this frame


class FrameSource:
    """Iterate to get frames; `skipped` counts frames that could not be read or converted."""

    name = "source"

    def __init__(self):
        self.skipped = 0
        self.skip_reasons: list[str] = []
        self.end_reason = "end of source"

    def _skip(self, reason: str) -> None:
        self.skipped += 1
        if len(self.skip_reasons) < 100:  # keep the log bounded on a long broken stream
            self.skip_reasons.append(reason)

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.name


# ----------------------------------------------------------------------------- images


def list_images(spec: str) -> list[Path]:
    """Image files named by a file, a folder (sorted; its sub-folders too) or a glob pattern."""
    p = Path(spec)
    if p.is_dir():
        # Sub-folders count: a slide's frames are often filed per patient or per day.
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        if not files:
            raise UserError(f"{spec}: folder holds no images ({', '.join(sorted(IMAGE_EXTS))}), "
                            "not even in its sub-folders")
        return files
    if p.is_file():
        return [p]
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(f) for f in _glob.glob(spec, recursive=True)
                       if Path(f).suffix.lower() in IMAGE_EXTS and Path(f).is_file())
        if not files:
            raise UserError(f"{spec}: the pattern matches no image files")
        return files
    raise UserError(f"{spec}: no such file, folder or pattern")


class ImageSource(FrameSource):
    def __init__(self, spec: str, loop: bool = False):
        super().__init__()
        self.files = list_images(spec)
        self.loop = loop
        self.name = spec

    def __iter__(self):
        index = 0
        while True:
            for f in self.files:
                t = time.perf_counter()
                try:
                    img = read_image_rgb(f)
                except FrameFormatError as exc:
                    self._skip(str(exc))
                    index += 1
                    continue
                yield Frame(index, img, self._label(f), time.perf_counter() - t)
                index += 1
            if not self.loop:
                return

    def _label(self, f: Path) -> str:
        """The frame's name in the logs: its path relative to the source folder (base names
        collide across sub-folders), or the file name for a file or a glob."""
        root = Path(self.name)
        if root.is_dir():
            try:
                return f.relative_to(root).as_posix()
            except ValueError:
                pass
        return f.name

    def describe(self):
        return f"{len(self.files)} image file(s) from {self.name}" + (" (looping)" if self.loop else "")


# ----------------------------------------------------------------------------- retry with backoff


class RetryBackoff:
    """The retry budget both live cameras share: after each consecutive failure wait `backoff`
    seconds, doubling each time, for at most `retries` waits; a success starts the count over.

        if not budget.wait_to_retry():  # the caller says why it gave up (error or end_reason)
            ...give up...
    """

    def __init__(self, retries: int, backoff: float, sleep: Callable[[float], None] = time.sleep):
        self.retries, self.backoff, self._sleep = int(retries), float(backoff), sleep
        self.failures = 0  # consecutive, since the last success

    def wait_to_retry(self) -> bool:
        """Count one failure; sleep and return True if a retry is left, else return False at once."""
        self.failures += 1
        if self.failures > self.retries:
            return False
        self._sleep(self.backoff * 2 ** (self.failures - 1))
        return True

    def succeeded(self) -> None:
        self.failures = 0


# ----------------------------------------------------------------------------- OpenCV capture


def _convert(raw: np.ndarray, color_order: str) -> np.ndarray:
    return to_rgb_uint8(raw, color_order if raw.ndim == 3 else "RGB")


class VideoSource(FrameSource):
    """A video file; the last frames of a damaged file end the stream, they are not retried."""

    def __init__(self, path: str, loop: bool = False, open_capture: Callable = cv2.VideoCapture):
        super().__init__()
        self.path = path
        self.loop = loop
        self.name = path
        self._open = open_capture
        cap = open_capture(path)
        ok = cap.isOpened()
        cap.release()
        if not ok:
            raise UserError(f"{path}: cannot open the video (unknown codec or damaged file)")

    def __iter__(self):
        index = 0
        while True:
            cap = self._open(self.path)
            got_any = False
            try:
                while True:
                    t = time.perf_counter()
                    ok, raw = cap.read()
                    if not ok or raw is None:
                        break
                    got_any = True
                    try:
                        img = _convert(raw, "BGR")
                    except FrameFormatError as exc:
                        self._skip(f"{self.path} frame {index}: {exc}")
                        index += 1
                        continue
                    yield Frame(index, img, f"{Path(self.path).name}#{index}", time.perf_counter() - t)
                    index += 1
            finally:
                cap.release()
            if not (self.loop and got_any):
                return

    def describe(self):
        return f"video {self.path}" + (" (looping)" if self.loop else "")


class CameraSource(FrameSource):
    """A live camera through OpenCV: index, /dev/videoN, or a GStreamer pipeline string.

    When reads fail, waits `backoff` seconds (doubling each time) for up to `retries` attempts,
    reopening the device; then the stream ends cleanly with `end_reason` saying why.
    """

    def __init__(self, spec, retries: int = 5, backoff: float = 0.5, width: int | None = None,
                 height: int | None = None, open_capture: Callable | None = None,
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__()
        self.spec = spec
        self.retries, self.backoff = int(retries), float(backoff)
        self.width, self.height = width, height
        self._sleep = sleep
        self.name = f"camera {spec}"
        self.reconnects = 0
        if open_capture is None:
            open_capture = self._default_open
        self._open = open_capture

    def _default_open(self, spec):
        if isinstance(spec, int) or (isinstance(spec, str) and spec.isdigit()):
            cap = cv2.VideoCapture(int(spec))
        elif isinstance(spec, str) and "!" in spec:  # a GStreamer pipeline
            cap = cv2.VideoCapture(spec, cv2.CAP_GSTREAMER)
        else:
            cap = cv2.VideoCapture(spec)
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        return cap

    def __iter__(self):
        cap = self._open_with_retries()
        if cap is None:
            raise UserError(f"{self.spec}: cannot open the camera (is it connected, and is it free? "
                            "for a GStreamer pipeline, does OpenCV have GStreamer support?)")
        index = 0
        budget = RetryBackoff(self.retries, self.backoff, self._sleep)
        try:
            while True:
                t = time.perf_counter()
                ok, raw = cap.read()
                if not ok or raw is None:
                    if not budget.wait_to_retry():
                        self.end_reason = f"camera stopped delivering frames ({self.retries} retries with backoff failed)"
                        return
                    cap.release()
                    cap = self._open(self.spec)
                    self.reconnects += 1
                    continue
                budget.succeeded()
                try:
                    img = _convert(raw, "BGR")
                except FrameFormatError as exc:
                    self._skip(f"camera frame {index}: {exc}")
                    index += 1
                    continue
                yield Frame(index, img, f"camera#{index}", time.perf_counter() - t)
                index += 1
        finally:
            cap.release()

    def _open_with_retries(self):
        """An opened capture, or None once the retries are spent."""
        budget = RetryBackoff(self.retries, self.backoff, self._sleep)
        while True:
            cap = self._open(self.spec)
            if cap.isOpened():
                return cap
            cap.release()
            if not budget.wait_to_retry():
                return None


# ----------------------------------------------------------------------------- picamera2


class PiCameraSource(FrameSource):
    """Raspberry Pi camera via picamera2. Its "RGB888" format is stored B, G, R in memory
    (named after the little-endian word), so frames are converted as BGR."""

    def __init__(self, width: int = 640, height: int = 480, camera_factory: Callable | None = None,
                 retries: int = 5, backoff: float = 0.5, sleep: Callable[[float], None] = time.sleep):
        super().__init__()
        if camera_factory is None:
            try:
                from picamera2 import Picamera2  # only on a Raspberry Pi (the 'pi' extra)
            except ImportError:
                raise UserError("the picamera2 source needs the picamera2 package (Raspberry Pi OS: "
                                "`sudo apt install python3-picamera2`, or pip install 'hemaedge[pi]')") from None
            camera_factory = Picamera2
        self.width, self.height = int(width), int(height)
        self.retries, self.backoff, self._sleep = int(retries), float(backoff), sleep
        self.cam = camera_factory()
        config = self.cam.create_video_configuration(main={"format": "RGB888", "size": (self.width, self.height)})
        self.cam.configure(config)
        self.name = f"picamera2 {self.width}x{self.height}"

    def __iter__(self):
        self.cam.start()
        index = 0
        budget = RetryBackoff(self.retries, self.backoff, self._sleep)
        try:
            while True:
                t = time.perf_counter()
                reason = "capture returned no frame"
                try:
                    raw = self.cam.capture_array("main")
                except Exception as exc:  # the camera driver raises many kinds; all mean "no frame"
                    raw = None
                    reason = str(exc)
                if raw is None:
                    if not budget.wait_to_retry():
                        self.end_reason = f"picamera2 stopped delivering frames after {self.retries} retries: {reason}"
                        return
                    continue
                budget.succeeded()
                try:
                    img = to_rgb_uint8(raw, "BGR")
                except FrameFormatError as exc:
                    self._skip(f"picamera2 frame {index}: {exc}")
                    index += 1
                    continue
                yield Frame(index, img, f"picamera2#{index}", time.perf_counter() - t)
                index += 1
        finally:
            self.close()

    def close(self):
        try:
            self.cam.stop()
        except Exception:  # already stopped
            pass


# ----------------------------------------------------------------------------- choosing and limiting


def open_source(spec: str, loop: bool = False, retries: int = 5, backoff: float = 0.5,
                width: int | None = None, height: int | None = None) -> FrameSource:
    """The source a user means by a string.

    "picamera2" (or "picamera2:WIDTHxHEIGHT") -> Pi camera; an integer or /dev/video* or a
    string with "!" (GStreamer) -> camera; a video file by extension -> video; a file, folder
    or glob of images -> images.
    """
    s = str(spec).strip()
    if s.startswith("picamera2"):
        size = s.split(":", 1)[1] if ":" in s else ""
        w, h = (int(v) for v in size.lower().split("x")) if size else (width or 640, height or 480)
        return PiCameraSource(w, h, retries=retries, backoff=backoff)
    if s.isdigit() or s.startswith("/dev/video") or "!" in s:
        return CameraSource(s, retries=retries, backoff=backoff, width=width, height=height)
    p = Path(s)
    if p.suffix.lower() in VIDEO_EXTS:
        if not p.is_file():
            raise UserError(f"{s}: no such video file")
        return VideoSource(s, loop=loop)
    if s.startswith(("rtsp://", "http://", "https://")):
        return CameraSource(s, retries=retries, backoff=backoff)
    return ImageSource(s, loop=loop)


def limit(frames, max_frames: int | None = None, fps: float | None = None,
          sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.perf_counter):
    """Stop after `max_frames` and pace to at most `fps` frames per second."""
    period = 1.0 / fps if fps else 0.0
    next_t = clock()
    try:
        for n, frame in enumerate(frames):
            if max_frames is not None and n >= max_frames:
                return
            if period:
                wait = next_t - clock()
                if wait > 0:
                    sleep(wait)
                next_t = max(next_t, clock()) + period  # a slow frame delays the next, no catch-up burst
            yield frame
    finally:
        if hasattr(frames, "close"):
            frames.close()  # release the camera or file now, not when garbage-collected
