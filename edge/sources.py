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
are applied by `limit()` around any source; `max_frames` given to a source also counts the frames
it had to skip, so a stream of unreadable frames still ends. A source never spins without
progress: a looping folder or video with nothing readable in a whole pass ends, and so does a
camera that delivers only frames that cannot be converted.

Network streams (rtsp://, http(s)://, MJPEG cameras) are opened with open and read timeouts, so
a stalled stream counts as a failed read within seconds and Ctrl-C / SIGTERM act promptly.
"""
from __future__ import annotations

import glob as _glob
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from hemaedge.edge.errors import SourceError, UsageError
from hemaedge.edge.preprocess import FrameFormatError, read_image_rgb, to_rgb_uint8

logger = logging.getLogger(__name__)
# Skipped frames logged one by one before only the count goes on (a broken stream must not flood the log).
LOGGED_SKIPS = 20

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".webm"}
# Image formats of phones, cameras and slide scanners that OpenCV cannot read: named in the error.
UNREADABLE_EXTS = {".heic": "HEIC (phone photos)", ".heif": "HEIF (phone photos)", ".avif": "AVIF",
                   ".dng": "camera raw", ".cr2": "camera raw", ".cr3": "camera raw", ".nef": "camera raw",
                   ".arw": "camera raw", ".raw": "camera raw", ".czi": "Zeiss slide scan", ".svs": "Aperio slide scan",
                   ".ndpi": "Hamamatsu slide scan", ".vsi": "Olympus slide scan", ".nd2": "Nikon NIS", ".lif": "Leica LIF"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")

# A stalled network stream: give up a read after this long (OpenCV's FFmpeg default is 30 s).
STREAM_OPEN_TIMEOUT_MS = 5000
STREAM_READ_TIMEOUT_MS = 1000
# A live camera that delivers this many frames in a row that cannot be converted is not a camera
# we can use: end the stream rather than spin.
MAX_CONSECUTIVE_BAD_FRAMES = 200


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
        self.max_frames: int | None = None  # frames to take, skipped ones included (None: all)
        # what converting the frames had to assume (message -> frames), e.g. 12-bit data in 16-bit
        # files: the run's input warnings (`edge.input_checks`)
        self.input_notes: dict[str, int] = {}

    def _skip(self, reason: str) -> None:
        self.skipped += 1
        if len(self.skip_reasons) < 100:  # keep the log bounded on a long broken stream
            self.skip_reasons.append(reason)
        if self.skipped <= LOGGED_SKIPS:
            logger.warning("frame skipped: %s", reason)
            if self.skipped == LOGGED_SKIPS:
                logger.warning("further unreadable frames are counted in the summary only")

    def _limit_reached(self, index: int) -> bool:
        """True once `max_frames` positions (read or skipped) have been taken from the source."""
        if self.max_frames is not None and index >= self.max_frames:
            self.end_reason = f"reached the frame limit ({self.max_frames})"
            return True
        return False

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return self.name


# ----------------------------------------------------------------------------- images


def _unreadable_formats(files) -> str:
    """'; found 3 .heic files (HEIC (phone photos)), which cannot be read here: ...' for the files
    of a folder or pattern that hold no readable image, or '' when none is of such a format."""
    found: dict[str, int] = {}
    for f in files:
        ext = Path(f).suffix.lower()
        if ext in UNREADABLE_EXTS:
            found[ext] = found.get(ext, 0) + 1
    if not found:
        return ""
    what = ", ".join(f"{n} {ext} file{'s' if n != 1 else ''} ({UNREADABLE_EXTS[ext]})" for ext, n in found.items())
    return f"; found {what}, which cannot be read here: export them as JPEG, PNG or TIFF"


def list_images(spec: str) -> list[Path]:
    """Image files named by a file, a folder (sorted; its sub-folders too) or a glob pattern."""
    p = Path(spec)
    if p.is_dir():
        # Sub-folders count: a slide's frames are often filed per patient or per day.
        files = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS and f.is_file())
        if not files:
            raise SourceError(f"{spec}: folder holds no images ({', '.join(sorted(IMAGE_EXTS))}), "
                              "not even in its sub-folders" + _unreadable_formats(p.rglob("*")))
        return files
    if p.is_file():
        if p.suffix.lower() in UNREADABLE_EXTS:
            raise SourceError(f"{spec}: a {UNREADABLE_EXTS[p.suffix.lower()]} file, which cannot be read here: "
                              "export it as JPEG, PNG or TIFF")
        return [p]
    if any(ch in spec for ch in "*?["):
        files = sorted(Path(f) for f in _glob.glob(spec, recursive=True)
                       if Path(f).suffix.lower() in IMAGE_EXTS and Path(f).is_file())
        if not files:
            raise SourceError(f"{spec}: the pattern matches no image files"
                              + _unreadable_formats(_glob.glob(spec, recursive=True)))
        return files
    raise SourceError(f"{spec}: no such file, folder or pattern")


class ImageSource(FrameSource):
    def __init__(self, spec: str, loop: bool = False):
        super().__init__()
        self.files = list_images(spec)
        self.loop = loop
        self.name = spec

    def __iter__(self):
        index = 0
        while True:
            readable = 0
            for f in self.files:
                if self._limit_reached(index):
                    return
                t = time.perf_counter()
                try:
                    img = read_image_rgb(f, self.input_notes)
                except (FrameFormatError, OSError) as exc:
                    # corrupt, or gone / not readable since the folder was listed: skip, never abort
                    self._skip(str(exc) if isinstance(exc, FrameFormatError) else _os_reason(f, exc))
                    index += 1
                    continue
                readable += 1
                yield Frame(index, img, self._label(f), time.perf_counter() - t)
                index += 1
            if not self.loop:
                return
            if not readable:
                self.end_reason = "no readable image in a whole pass over the files (looping stopped)"
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


def _os_reason(path, exc: OSError) -> str:
    what = {FileNotFoundError: "disappeared", PermissionError: "is not readable (permission denied)",
            IsADirectoryError: "is now a folder"}.get(type(exc), f"cannot be read ({exc.strerror or exc})")
    return f"{path}: {what}"


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


def _convert(raw: np.ndarray, color_order: str, notes: dict | None = None) -> np.ndarray:
    return to_rgb_uint8(raw, color_order if raw.ndim == 3 else "RGB", notes)


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
            raise SourceError(f"{path}: cannot open the video (unknown codec or damaged file)")

    def __iter__(self):
        index = 0
        while True:
            cap = self._open(self.path)
            got_any = False
            try:
                while True:
                    if self._limit_reached(index):
                        return
                    t = time.perf_counter()
                    ok, raw = cap.read()
                    if not ok or raw is None:
                        break
                    try:
                        img = _convert(raw, "BGR", self.input_notes)
                    except FrameFormatError as exc:
                        self._skip(f"{self.path} frame {index}: {exc}")
                        index += 1
                        continue
                    got_any = True
                    yield Frame(index, img, f"{Path(self.path).name}#{index}", time.perf_counter() - t)
                    index += 1
            finally:
                cap.release()
            if not self.loop:
                return
            if not got_any:
                self.end_reason = "no usable frame in a whole pass over the video (looping stopped)"
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
        elif is_stream_url(spec):
            cap = open_stream(spec)
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
            raise SourceError(f"{self.spec}: cannot open the camera (is it connected, and is it free? "
                              "for a GStreamer pipeline, does OpenCV have GStreamer support?)")
        index = 0
        bad_in_a_row = 0
        budget = RetryBackoff(self.retries, self.backoff, self._sleep)
        try:
            while True:
                if self._limit_reached(index):
                    return
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
                    img = _convert(raw, "BGR", self.input_notes)
                except FrameFormatError as exc:
                    self._skip(f"camera frame {index}: {exc}")
                    index += 1
                    bad_in_a_row += 1
                    if bad_in_a_row >= MAX_CONSECUTIVE_BAD_FRAMES:
                        self.end_reason = f"camera delivered {bad_in_a_row} frames in a row that cannot be converted"
                        return
                    continue
                bad_in_a_row = 0
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
                raise SourceError("the picamera2 source needs the picamera2 package (Raspberry Pi OS: "
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
        bad_in_a_row = 0
        budget = RetryBackoff(self.retries, self.backoff, self._sleep)
        try:
            while True:
                if self._limit_reached(index):
                    return
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
                    img = to_rgb_uint8(raw, "BGR", self.input_notes)
                except FrameFormatError as exc:
                    self._skip(f"picamera2 frame {index}: {exc}")
                    index += 1
                    bad_in_a_row += 1
                    if bad_in_a_row >= MAX_CONSECUTIVE_BAD_FRAMES:
                        self.end_reason = f"picamera2 delivered {bad_in_a_row} frames in a row that cannot be converted"
                        return
                    continue
                bad_in_a_row = 0
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


def is_stream_url(spec) -> bool:
    return isinstance(spec, str) and spec.lower().startswith(STREAM_SCHEMES)


def open_stream(url: str, open_timeout_ms: int = STREAM_OPEN_TIMEOUT_MS,
                read_timeout_ms: int = STREAM_READ_TIMEOUT_MS):
    """A network stream through OpenCV's FFmpeg back end with open and read timeouts, so a
    stalled server costs at most `read_timeout_ms` per read instead of FFmpeg's 30 s."""
    return cv2.VideoCapture(url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_ms),
                                                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_ms)])


def _picamera_size(spec: str, width, height) -> tuple[int, int]:
    if spec == "picamera2":
        return int(width or 640), int(height or 480)
    size = spec[len("picamera2:"):] if spec.startswith("picamera2:") else None
    try:
        w, h = (int(v) for v in size.lower().split("x"))
    except (AttributeError, ValueError):
        raise UsageError(f"{spec!r}: not a Pi camera source; use 'picamera2' or 'picamera2:WIDTHxHEIGHT' "
                         "(e.g. picamera2:640x480)") from None
    if not (16 <= w <= 8192 and 16 <= h <= 8192):
        raise UsageError(f"{spec!r}: the Pi camera size must be between 16 and 8192 pixels a side")
    return w, h


def open_source(spec: str, loop: bool = False, retries: int = 5, backoff: float = 0.5,
                width: int | None = None, height: int | None = None,
                max_frames: int | None = None) -> FrameSource:
    """The source a user means by a string.

    "picamera2" (or "picamera2:WIDTHxHEIGHT") -> Pi camera; an integer or /dev/video* or a
    string with "!" (GStreamer) -> camera; rtsp:// http(s):// ... -> network stream (even when
    the URL ends in .mp4); a video file by extension -> video; a file, folder or glob of
    images -> images. `max_frames` stops the source after that many frames, skipped ones included.
    """
    s = str(spec).strip()
    if not s:
        raise UsageError("the frame source is empty: name an image file, folder or glob, a video file, "
                         "a camera (0, /dev/video0, picamera2) or a stream URL")
    if s.startswith("picamera2"):
        w, h = _picamera_size(s, width, height)
        src = PiCameraSource(w, h, retries=retries, backoff=backoff)
    elif s.isdigit() or s.startswith("/dev/video") or "!" in s or is_stream_url(s):
        src = CameraSource(s, retries=retries, backoff=backoff, width=width, height=height)
    elif Path(s).suffix.lower() in VIDEO_EXTS:
        if not Path(s).is_file():
            raise SourceError(f"{s}: no such video file")
        src = VideoSource(s, loop=loop)
    else:
        src = ImageSource(s, loop=loop)
    src.max_frames = max_frames
    return src


def swap_red_blue(frames):
    """The frames with red and blue swapped (`edge run --swap-red-blue`: a camera, or the program
    that saved the files, that delivers BGR as RGB; summary.json's input warnings say when)."""
    try:
        for frame in frames:
            frame.image = np.ascontiguousarray(frame.image[..., ::-1])
            yield frame
    finally:
        if hasattr(frames, "close"):
            frames.close()  # release the camera or file now


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
