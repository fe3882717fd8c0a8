"""Frame sources: every source that can run here, on real frames; picamera2 with a fake camera."""
from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from hemaedge.edge.errors import SourceError
from hemaedge.edge.preprocess import read_image_rgb
from hemaedge.edge.sources import (CameraSource, ImageSource, PiCameraSource, RetryBackoff, VideoSource, limit,
                                   list_images, open_source)

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "samples"


def write_video(path: Path, frames_rgb: list[np.ndarray], fps: float = 5.0) -> Path:
    h, w = frames_rgb[0].shape[:2]
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert wr.isOpened(), "OpenCV cannot write MJPG AVI here"
    for f in frames_rgb:
        wr.write(cv2.cvtColor(cv2.resize(f, (w, h)), cv2.COLOR_RGB2BGR))
    wr.release()
    return path


@pytest.fixture(scope="module")
def bccd_frames():
    return [read_image_rgb(p) for p in sorted((SAMPLES / "bccd").glob("*.jpg"))]


@pytest.fixture()
def video(tmp_path, bccd_frames):
    return write_video(tmp_path / "smear.avi", bccd_frames)


def test_single_image_file():
    f = SAMPLES / "pbc" / "val_00000.jpg"
    frames = list(open_source(str(f)))
    assert len(frames) == 1 and frames[0].image.shape == (363, 360, 3) and frames[0].image.dtype == np.uint8
    assert frames[0].name == "val_00000.jpg"
    # RGB order: the source gives the same pixels as the one reader training uses
    assert np.array_equal(frames[0].image, read_image_rgb(f))


def test_folder_lists_images_only_sorted():
    src = open_source(str(SAMPLES / "bccd"))  # the folder also holds .xml and LICENSE
    names = [fr.name for fr in src]
    assert names == sorted(p.name for p in (SAMPLES / "bccd").glob("*.jpg"))


def test_glob_pattern():
    frames = list(open_source(str(SAMPLES / "pbc" / "val_0000*.jpg")))
    assert [f.name for f in frames] == ["val_00000.jpg", "val_00003.jpg", "val_00004.jpg", "val_00009.jpg"]


def test_missing_and_empty_sources_are_user_errors(tmp_path):
    with pytest.raises(SourceError, match="no such file"):
        open_source(str(tmp_path / "nope"))
    with pytest.raises(SourceError, match="holds no images"):
        open_source(str(tmp_path))
    with pytest.raises(SourceError, match="matches no image"):
        open_source(str(tmp_path / "*.png"))
    with pytest.raises(SourceError, match="no such video"):
        open_source(str(tmp_path / "gone.mp4"))


def test_unreadable_frames_are_skipped_and_counted(tmp_path):
    shutil.copy(SAMPLES / "pbc" / "val_00000.jpg", tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "c.png").write_bytes(b"")
    shutil.copy(SAMPLES / "pbc" / "val_00003.jpg", tmp_path / "d.jpg")
    src = ImageSource(str(tmp_path))
    frames = list(src)
    assert [f.name for f in frames] == ["a.jpg", "d.jpg"]
    assert [f.index for f in frames] == [0, 3]
    assert src.skipped == 2 and any("b.jpg" in r for r in src.skip_reasons)


def test_frames_of_any_depth_are_converted(tmp_path):
    rgb = read_image_rgb(SAMPLES / "pbc" / "val_00000.jpg")
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    cv2.imwrite(str(tmp_path / "1_gray.png"), gray)
    cv2.imwrite(str(tmp_path / "2_rgba.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGRA))
    cv2.imwrite(str(tmp_path / "3_16bit.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    frames = list(ImageSource(str(tmp_path)))
    assert len(frames) == 3
    for f in frames:
        assert f.image.dtype == np.uint8 and f.image.shape == rgb.shape
    assert np.array_equal(frames[1].image, rgb)
    assert np.array_equal(frames[2].image, rgb)  # 16-bit keeps its 8 most significant bits
    assert np.array_equal(frames[0].image[..., 0], gray)


def test_video_file(video, bccd_frames):
    src = open_source(str(video))
    assert isinstance(src, VideoSource)
    frames = list(src)
    assert len(frames) == len(bccd_frames)
    # MJPG is lossy: close to the original, and in RGB order (not BGR)
    for got, want in zip(frames, bccd_frames):
        assert got.image.shape == want.shape
        assert np.abs(got.image.astype(int) - want).mean() < 6


def test_looping_video_and_max_frames(video):
    frames = list(limit(iter(VideoSource(str(video), loop=True)), max_frames=7))
    assert [f.index for f in frames] == list(range(7))


def test_damaged_video_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match="cannot open the video"):
        open_source(str(bad))


def test_camera_source_fed_by_a_video(video, bccd_frames):
    """The OpenCV camera path (index, V4L2 and GStreamer all go through VideoCapture) reading a
    video file as if it were a camera."""
    src = open_source(str(video)).path  # a file path that VideoCapture opens like a device
    cam = CameraSource(src, retries=0, sleep=lambda s: None)
    frames = list(cam)
    assert len(frames) == len(bccd_frames)
    assert np.abs(frames[0].image.astype(int) - bccd_frames[0]).mean() < 6
    assert "stopped delivering" in cam.end_reason  # end of stream = camera gone, ended cleanly
    # with retries, the camera is reopened and delivers again (here: the file from its start)
    waits = []
    cam = CameraSource(src, retries=2, backoff=0.2, sleep=waits.append)
    frames = list(limit(iter(cam), max_frames=len(bccd_frames) + 2))
    assert len(frames) == len(bccd_frames) + 2 and cam.reconnects == 1 and waits == [0.2]


class FlakyCapture:
    """A camera that delivers `n` frames, then nothing (unplugged)."""

    opened = 0

    def __init__(self, frames, n):
        self.frames, self.n, self.i = frames, n, 0
        FlakyCapture.opened += 1

    def isOpened(self):
        return True

    def read(self):
        if self.i < self.n:
            self.i += 1
            return True, self.frames[(self.i - 1) % len(self.frames)]
        return False, None

    def release(self):
        pass


def test_camera_that_stops_is_retried_with_backoff_then_ends_cleanly(bccd_frames):
    bgr = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in bccd_frames]
    waits = []
    first = {"done": False}

    def open_capture(spec):
        if not first["done"]:
            first["done"] = True
            return FlakyCapture(bgr, 4)
        return FlakyCapture(bgr, 0)  # reconnecting does not help

    src = CameraSource(0, retries=3, backoff=0.5, open_capture=open_capture, sleep=waits.append)
    frames = list(src)
    assert len(frames) == 4
    assert np.array_equal(frames[0].image, bccd_frames[0])  # BGR from OpenCV -> RGB
    assert waits == [0.5, 1.0, 2.0]  # doubling backoff
    assert "stopped delivering" in src.end_reason


def test_camera_recovers_after_a_gap(bccd_frames):
    bgr = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in bccd_frames]
    caps = iter([FlakyCapture(bgr, 2), FlakyCapture(bgr, 0), FlakyCapture(bgr, 3), FlakyCapture(bgr, 0),
                 FlakyCapture(bgr, 0)])
    src = CameraSource(0, retries=2, backoff=0.01, open_capture=lambda s: next(caps), sleep=lambda s: None)
    assert len(list(src)) == 5


def test_camera_bad_frames_are_skipped(bccd_frames):
    good = cv2.cvtColor(bccd_frames[0], cv2.COLOR_RGB2BGR)
    weird = np.zeros((10, 10, 2), np.uint8)  # two channels: cannot be an image
    cap = FlakyCapture([good, weird, good], 3)
    src = CameraSource(0, retries=0, open_capture=lambda s: cap, sleep=lambda s: None)
    frames = list(src)
    assert len(frames) == 2 and src.skipped == 1
    assert "channels" in src.skip_reasons[0]


def test_camera_that_never_opens_is_a_user_error():
    class Closed:
        def isOpened(self):
            return False

        def release(self):
            pass

    src = CameraSource(7, retries=2, backoff=0.0, open_capture=lambda s: Closed(), sleep=lambda s: None)
    with pytest.raises(SourceError, match="cannot open the camera"):
        list(src)


class FakePicamera2:
    """Mimics picamera2.Picamera2: 'RGB888' frames arrive as B, G, R bytes."""

    def __init__(self, frames_bgr, fail_after=None):
        self.frames, self.fail_after = frames_bgr, fail_after
        self.i, self.started, self.stopped, self.config = 0, False, False, None

    def create_video_configuration(self, main):
        return {"main": main}

    def configure(self, config):
        self.config = config

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True

    def capture_array(self, name="main"):
        if self.fail_after is not None and self.i >= self.fail_after:
            raise RuntimeError("Camera frontend has timed out!")
        f = self.frames[self.i % len(self.frames)]
        self.i += 1
        return f


def test_picamera2_bgr_order_and_clean_end(bccd_frames):
    cam = FakePicamera2([cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in bccd_frames], fail_after=5)
    waits = []
    src = PiCameraSource(640, 480, camera_factory=lambda: cam, retries=2, backoff=0.25, sleep=waits.append)
    assert cam.config["main"] == {"format": "RGB888", "size": (640, 480)}
    frames = list(src)
    assert len(frames) == 5 and cam.started and cam.stopped
    assert np.array_equal(frames[0].image, bccd_frames[0])  # channels swapped back to RGB
    assert waits == [0.25, 0.5] and "timed out" in src.end_reason


def test_picamera2_xrgb8888_four_channels(bccd_frames):
    bgra = cv2.cvtColor(bccd_frames[1], cv2.COLOR_RGB2BGRA)
    src = PiCameraSource(camera_factory=lambda: FakePicamera2([bgra], fail_after=1), retries=0, sleep=lambda s: None)
    frames = list(src)
    assert np.array_equal(frames[0].image, bccd_frames[1])


def test_picamera2_missing_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails as on a PC
    with pytest.raises(SourceError, match="picamera2"):
        open_source("picamera2:320x240")


def test_fps_limit_paces_frames_without_real_sleeping():
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    frames = list(limit(iter(range(5)), fps=10, sleep=sleep, clock=lambda: now[0]))
    assert frames == list(range(5))
    assert sum(slept) == pytest.approx(0.4)  # 5 frames at 10 fps: 4 gaps of 0.1 s


def test_list_images_folder_sorted(tmp_path):
    for n in ("b.png", "a.jpg", "notes.txt"):
        (tmp_path / n).write_bytes(b"x")
    assert [p.name for p in list_images(str(tmp_path))] == ["a.jpg", "b.png"]


# ----------------------------------------------------------------------------- the shared retry budget


def test_retry_backoff_doubles_then_gives_up_without_a_last_wait():
    waits = []
    budget = RetryBackoff(retries=3, backoff=0.5, sleep=waits.append)
    assert [budget.wait_to_retry() for _ in range(4)] == [True, True, True, False]
    assert waits == [0.5, 1.0, 2.0]  # giving up does not sleep first
    assert RetryBackoff(retries=0, backoff=9.0, sleep=waits.append).wait_to_retry() is False
    assert waits == [0.5, 1.0, 2.0]


def test_retry_backoff_succeeds_after_transient_failures_and_starts_over():
    """A call that fails twice then works, retried through the budget; after the success the
    next failure waits the first backoff again, not the doubled one."""
    waits = []
    budget = RetryBackoff(retries=2, backoff=0.1, sleep=waits.append)
    results = iter([None, None, "frame", None, "frame"])
    got = []
    while len(got) < 2:
        r = next(results)
        if r is None:
            assert budget.wait_to_retry()
            continue
        budget.succeeded()
        got.append(r)
    assert got == ["frame", "frame"]
    assert waits == pytest.approx([0.1, 0.2, 0.1])


def test_camera_that_never_opens_waits_with_backoff_before_the_error():
    opens = []

    class Closed:
        def isOpened(self):
            return False

        def release(self):
            pass

    waits = []
    src = CameraSource(3, retries=2, backoff=0.25, open_capture=lambda s: opens.append(s) or Closed(),
                       sleep=waits.append)
    with pytest.raises(SourceError, match="3: cannot open the camera"):
        list(src)
    assert len(opens) == 3 and waits == [0.25, 0.5]  # first try + 2 retries, no wait after the last


class ScriptedPicamera2(FakePicamera2):
    """A Pi camera whose captures follow a script: a frame, None (no frame) or an exception."""

    def __init__(self, script):
        super().__init__([])
        self.script = iter(script)

    def capture_array(self, name="main"):
        item = next(self.script)
        if isinstance(item, Exception):
            raise item
        return item


def test_picamera2_recovers_after_transient_failures(bccd_frames):
    bgr = cv2.cvtColor(bccd_frames[0], cv2.COLOR_RGB2BGR)
    gone = RuntimeError("Camera frontend has timed out!")
    cam = ScriptedPicamera2([bgr, None, gone, bgr, gone, bgr, gone, gone, gone])
    waits = []
    src = PiCameraSource(camera_factory=lambda: cam, retries=2, backoff=0.1, sleep=waits.append)
    frames = list(src)
    assert [f.index for f in frames] == [0, 1, 2]
    # two gaps within budget (each success starts the count over), then three failures in a row end it
    assert waits == pytest.approx([0.1, 0.2, 0.1, 0.1, 0.2])
    assert src.end_reason == "picamera2 stopped delivering frames after 2 retries: Camera frontend has timed out!"
    assert cam.stopped


# ----------------------------------------------------------------------------- inputs of other cameras (issues #12, #13)


def _exif_orientation_jpeg(rgb: np.ndarray, orientation: int) -> bytes:
    from hemaedge.benchmarks.tools.input_robustness import with_exif_orientation

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    return with_exif_orientation(buf.tobytes(), orientation)


def test_an_exif_rotated_jpeg_is_read_upright(tmp_path):
    """A phone stores a portrait photo on its side with EXIF orientation 6: read as it is shown,
    not on its side (IMREAD_UNCHANGED ignored the tag, so every box was in the wrong place)."""
    rgb = read_image_rgb(SAMPLES / "bccd" / "BloodImage_00007.jpg")
    stored = np.ascontiguousarray(np.rot90(rgb, k=1))  # turned anticlockwise; 6 = turn clockwise to show
    data = _exif_orientation_jpeg(stored, 6)
    (tmp_path / "phone.jpg").write_bytes(data)
    frame = next(iter(ImageSource(str(tmp_path / "phone.jpg"))))
    raw = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    assert raw.shape == stored.shape  # the stored pixels really are on their side
    assert frame.image.shape == rgb.shape
    assert np.array_equal(frame.image, np.rot90(raw, k=-1))


def test_sixteen_bit_frames_of_12_bit_data_are_read_at_their_depth_and_noted(tmp_path):
    """A 12-bit camera's frames in 16-bit files were read as their top 8 bits: near-black, every
    cell lost without a word. Now read at the depth they use, with a note for the run's warnings."""
    rgb = read_image_rgb(SAMPLES / "pbc" / "val_00000.jpg")
    cv2.imwrite(str(tmp_path / "a_12bit.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 16)
    cv2.imwrite(str(tmp_path / "b_16bit.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    src = ImageSource(str(tmp_path))
    frames = list(src)
    assert np.array_equal(frames[0].image, rgb)  # value x 16 >> 4
    assert np.array_equal(frames[1].image, rgb)  # full 16 bits: still the 8 most significant
    assert list(src.input_notes.values()) == [1]
    assert "12-bit data" in next(iter(src.input_notes))


def test_unreadable_files_are_skipped_with_the_reason(tmp_path):
    raw = (SAMPLES / "bccd" / "BloodImage_00007.jpg").read_bytes()
    (tmp_path / "a_good.jpg").write_bytes(raw)
    (tmp_path / "b_empty.jpg").write_bytes(b"")
    (tmp_path / "c_notes.jpg").write_text("not an image\n")
    (tmp_path / "d_truncated.jpg").write_bytes(raw[: len(raw) * 6 // 10])
    src = ImageSource(str(tmp_path))
    frames = list(src)
    assert [f.name for f in frames] == ["a_good.jpg"] and src.skipped == 3
    reasons = " | ".join(src.skip_reasons)
    assert "b_empty.jpg: not a readable image: empty file (0 bytes)" in reasons
    assert "c_notes.jpg: not a readable image: not an image file" in reasons
    assert "d_truncated.jpg: not a readable image: truncated JPEG (no end-of-image marker" in reasons


def test_a_cut_short_file_is_found_by_its_structure_whatever_the_decoder(tmp_path):
    """OpenCV 4 (a Raspberry Pi's) decodes a truncated JPEG with a grey bottom and only a warning
    (the cells in the lost part vanish from the count); OpenCV 5 refuses it without saying why. The
    file's structure says it: cut JPEGs and PNGs are skipped as truncated, while a phone's photo
    with an EXIF thumbnail (its own end marker) and a motion photo's video appended after the end
    are read."""
    from hemaedge.edge.preprocess import truncation

    rgb = read_image_rgb(SAMPLES / "bccd" / "BloodImage_00007.jpg")
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    jpeg = cv2.imencode(".jpg", bgr)[1].tobytes()
    thumb = b"Exif\x00\x00" + cv2.imencode(".jpg", cv2.resize(bgr, (160, 120)))[1].tobytes()
    whole = {
        "progressive": cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
        "restart markers": cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_RST_INTERVAL, 4])[1].tobytes(),
        "thumbnail": jpeg[:2] + b"\xff\xe1" + (len(thumb) + 2).to_bytes(2, "big") + thumb + jpeg[2:],
        "png": cv2.imencode(".png", bgr)[1].tobytes(),
    }
    for name, data in whole.items():
        assert truncation(data) is None, name
        assert truncation(data[: len(data) * 3 // 4]), name
    (tmp_path / "a_motion.jpg").write_bytes(jpeg + b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 100)
    (tmp_path / "b_cut.png").write_bytes(whole["png"][: len(whole["png"]) // 2])
    src = ImageSource(str(tmp_path))
    frames = list(src)
    assert [f.name for f in frames] == ["a_motion.jpg"] and np.array_equal(frames[0].image, cv2.imdecode(
        np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[..., ::-1])
    assert "b_cut.png: not a readable image: truncated PNG (no IEND chunk" in src.skip_reasons[0]


def test_swap_red_blue_gives_back_the_frame_a_bgr_camera_meant(tmp_path):
    from hemaedge.edge.sources import swap_red_blue

    rgb = read_image_rgb(SAMPLES / "pbc" / "val_00000.jpg")
    cv2.imwrite(str(tmp_path / "bgr.png"), rgb)  # RGB bytes written as if BGR: red and blue swapped
    src = ImageSource(str(tmp_path))
    (frame,) = list(swap_red_blue(iter(src)))
    assert np.array_equal(frame.image, rgb) and frame.image.flags["C_CONTIGUOUS"]


def test_phone_and_raw_formats_are_named_in_the_error(tmp_path):
    """A folder of iPhone photos (HEIC) or one camera-raw file: the error says which files it
    found and what to do, not only that there are no images."""
    (tmp_path / "phone").mkdir()
    for i in range(2):
        (tmp_path / "phone" / f"IMG_{i}.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    with pytest.raises(SourceError, match=r"found 2 \.heic files \(HEIC \(phone photos\)\).*export them as JPEG"):
        list_images(str(tmp_path / "phone"))
    (tmp_path / "field.dng").write_bytes(b"II*\x00")
    with pytest.raises(SourceError, match=r"field\.dng: a camera raw file.*export it as JPEG"):
        open_source(str(tmp_path / "field.dng"))
