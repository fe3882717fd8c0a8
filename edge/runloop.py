"""The run loop of `edge run`: feed frames from a source through the classifier, record every
frame, and always end with a summary, whatever happens to one frame.

* A frame that cannot be read (the source skips it) or that fails anywhere in processing (any
  exception of the classifier, or of an observer) is skipped and counted by reason; the run goes
  on. Only an output that cannot be written (full disk, read-only folder) ends the run early,
  with one OutputError, because a run that cannot record must not pretend to work; and so does a
  model that cannot run at all (BundleError: model and bundle disagree), after writing the
  summary, since every later frame would fail the same way.
* Ctrl-C and SIGTERM (`StopRequest`) end the run with its summary, recorded as "interrupted
  (Ctrl-C)" or "terminated (SIGTERM)": at once while waiting for a frame (a camera, a stalled
  stream), otherwise after the frame in flight has been recorded, so no record is cut in half.
  A signal during start-up ends the run before its first frame, with a summary of zero frames.
* summary.json / counts.csv are rewritten (atomically) every `SummaryEvery` frames or seconds,
  marked "complete": false, so a kill loses at most the last interval of the summary; the
  per-frame logs lose at most the frame in flight.

Extending the loop: pass `observers` (see `FrameObserver`): each sees every recorded frame
(annotated output, preview, status files, crops, ...) and may add a part to the summary. The
summary is built by one function (`build_summary`) from typed parts: what the run is
(`RunInfo`), how far it got (`RunProgress`), what was skipped (`SkipLog`) and the observers' parts.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
import time
from dataclasses import dataclass, field

from hemaedge.edge.errors import BundleError, OutputError
from hemaedge.edge.cli_support import command_line
from hemaedge.edge.metrics_runtime import MemoryMeter, machine_info, seconds_since_process_start

logger = logging.getLogger(__name__)

# How many skipped frames are logged one by one before only the count goes on.
LOGGED_SKIPS = 20


# ----------------------------------------------------------------------------- stopping


class RunInterrupted(KeyboardInterrupt):
    """Raised inside a wait for the next frame when a stop was requested (Ctrl-C, SIGTERM)."""


class StopRequest:
    """Ctrl-C and SIGTERM as a request to end the run with its summary.

    The signal handler only notes the request while a frame is being processed and recorded (the
    loop stops after that frame); while the loop waits for a frame it raises `RunInterrupted`
    so a blocked camera or a backoff sleep is left at once. A second signal always acts at once.
    """

    REASONS = {signal.SIGINT: "interrupted (Ctrl-C)", signal.SIGTERM: "terminated (SIGTERM)"}

    def __init__(self):
        self.reason: str | None = None
        self._waiting = False
        self._previous: dict = {}

    def install(self) -> "StopRequest":
        """Take over SIGINT and SIGTERM (also where a launcher left SIGINT ignored, e.g. a
        background job of a non-interactive shell). Outside the main thread this does nothing."""
        for sig in self.REASONS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a test runner thread)
                pass
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
        self._previous.clear()

    def request(self, reason: str) -> None:
        self.reason = self.reason or reason

    def _handle(self, signum, frame):
        again = self.reason is not None
        self.request(self.REASONS.get(signum, f"stopped by signal {signum}"))
        if self._waiting or again:
            raise RunInterrupted(self.reason)

    @contextlib.contextmanager
    def waiting(self):
        """Around the wait for the next frame: a stop request acts here at once."""
        if self.reason:
            raise RunInterrupted(self.reason)
        self._waiting = True
        try:
            yield
        finally:
            self._waiting = False


# ----------------------------------------------------------------------------- parts of a run


class FrameObserver:
    """Sees every recorded frame. Subclass and override what you need."""

    name = "observer"

    def on_frame(self, frame, result, row: dict) -> bool | None:
        """Return False to end the run (e.g. the preview window was closed)."""
        return None

    def end_reason(self) -> str:
        return f"{self.name} ended the run"

    def summary_part(self) -> dict:
        """Keys this observer adds to summary.json (keep them few and namespaced)."""
        return {}

    def close(self) -> None:
        pass


class AnnotatingObserver(FrameObserver):
    name = "annotated output"

    def __init__(self, annotator):
        self.annotator = annotator

    def on_frame(self, frame, result, row):
        self.annotator.add(frame, result)

    def close(self):
        self.annotator.close()


class PreviewObserver(FrameObserver):
    name = "preview"

    def __init__(self, preview):
        self.preview = preview

    def on_frame(self, frame, result, row):
        return self.preview.show(frame, result)

    def end_reason(self):
        return "preview window closed"

    def close(self):
        self.preview.close()


@dataclass
class SummaryEvery:
    """Rewrite the summary after this many frames or seconds, whichever comes first (0 = never)."""

    frames: int = 500
    seconds: float = 10.0
    _last_frames: int = 0
    _last_t: float = field(default_factory=time.monotonic)

    def due(self, frames: int, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if (self.frames and frames - self._last_frames >= self.frames) or \
                (self.seconds and now - self._last_t >= self.seconds):
            self._last_frames, self._last_t = frames, now
            return True
        return False


class SkipLog:
    """Frames the loop itself had to skip (processing failed), counted by reason."""

    def __init__(self):
        self.count = 0
        self.reasons: list[str] = []
        self.by_kind: dict[str, int] = {}

    def add(self, frame, stage: str, exc: BaseException) -> None:
        kind = f"{stage} error ({type(exc).__name__})"
        reason = f"{frame.name}: {kind}: {exc}"
        self.count += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        if len(self.reasons) < 100:
            self.reasons.append(reason)
        if self.count <= LOGGED_SKIPS:
            logger.warning("frame skipped: %s", reason, exc_info=logger.isEnabledFor(logging.DEBUG))
            if self.count == LOGGED_SKIPS:
                logger.warning("further skipped frames are counted in the summary only")


@dataclass
class RunInfo:
    """What the run is; fixed when it starts."""

    source: str
    model: dict
    load_s: float | None = None
    output: dict = field(default_factory=dict)
    pid: int = field(default_factory=os.getpid)
    started_utc: str = field(default_factory=lambda: datetime.datetime.now(
        datetime.timezone.utc).isoformat(timespec="seconds"))
    command: str = field(default_factory=lambda: command_line())


@dataclass
class RunProgress:
    """How far the run got."""

    wall_s: float
    frames: int
    first_result_s: float | None
    memory_mb: dict
    end_reason: str | None  # None while the run goes on
    complete: bool
    segmentation: dict = field(default_factory=dict)  # the crop rule, and the magnification read so far


def build_summary(recorder, info: RunInfo, progress: RunProgress, source, skips: SkipLog,
                  observers=()) -> dict:
    """The run's summary (summary.json) from its parts: the recorder's counts and latencies, what
    the run is, how far it got, what was skipped and why, and each observer's part."""
    source_skipped = getattr(source, "skipped", 0)
    skip_counts = {"unreadable frame": source_skipped} if source_skipped else {}
    skip_counts.update(skips.by_kind)
    wall = progress.wall_s
    parts = dict(
        frames_skipped=source_skipped + skips.count,
        skip_reasons=(list(getattr(source, "skip_reasons", [])) + skips.reasons)[:20],
        skip_counts=skip_counts,
        end_reason=progress.end_reason or "running",
        complete=progress.complete,
        source=info.source,
        wall_s=round(wall, 3),
        fps=round(progress.frames / wall, 3) if wall > 0 and progress.frames else 0.0,
        time_to_first_result_s=round(progress.first_result_s, 3) if progress.first_result_s is not None else None,
        model_load_s=round(info.load_s, 3) if info.load_s is not None else None,
        model=info.model,
        memory_mb=progress.memory_mb,
        segmentation=progress.segmentation,
        output=info.output,
        pid=info.pid,
        started_utc=info.started_utc,
        command=info.command,
        machine=machine_info(),
    )
    for obs in observers:
        parts.update(obs.summary_part())
    return recorder.summary(**parts)


def segmentation_part(classifier) -> dict:
    return {"crop_mode": classifier.crop_mode, "cell_fraction": classifier.cell_fraction,
            "crop_side": classifier.crop_side, "rbc_factor": classifier.rbc_factor,
            "red_cell_diameter_px": classifier.ruler.diameter, "ruler": classifier.ruler.summary(),
            **classifier.params.to_dict()}


# ----------------------------------------------------------------------------- the loop


class RunLoop:
    def __init__(self, source, classifier, recorder, info: RunInfo, *, frames=None, observers=(),
                 on_frame=None, stop: StopRequest | None = None, summary_every: SummaryEvery | None = None,
                 counting=None):
        from hemaedge.edge.counting import CountingSession

        self.source, self.classifier, self.recorder, self.info = source, classifier, recorder, info
        # each physical cell counted once, into the differential (edge/counting.py)
        self.counting = counting or CountingSession(classifier, one_slide=False)
        self.frames = frames if frames is not None else iter(source)
        self.observers = list(observers)
        self.on_frame = on_frame
        self.stop = stop or StopRequest()
        self.summary_every = summary_every or SummaryEvery()
        self.skips = SkipLog()
        self.memory = MemoryMeter()
        self.first_result_s: float | None = None
        self._t_start = time.perf_counter()

    def run(self) -> dict:
        """Process frames until the source ends or a stop; returns the summary (also written)."""
        end_reason = None
        fatal: Exception | None = None  # ends the run after its summary is written, then re-raised
        self._t_start = time.perf_counter()
        logger.debug("run loop started; summary rewritten every %s frames / %s s (0 = only at the end)",
                     self.summary_every.frames, self.summary_every.seconds)
        try:
            while True:
                t_cap = time.perf_counter()
                try:
                    with self.stop.waiting():
                        frame = next(self.frames)
                except StopIteration:
                    break
                except (KeyboardInterrupt, OutputError):
                    raise
                except Exception as exc:  # noqa: BLE001 - the source itself failed (camera gone for good, a bug)
                    fatal, end_reason = exc, f"the source failed: {exc}"
                    break
                ended_by = self._process(frame, t_cap)
                if ended_by:
                    end_reason = ended_by
                    break
                if self.stop.reason:
                    break
                if self.summary_every.due(self.recorder.frames):
                    self.recorder.write_summary(self.summary(None, complete=False))
                    logger.debug("summary written after %d frames", self.recorder.frames)
        except KeyboardInterrupt:  # RunInterrupted, or a plain Ctrl-C where no StopRequest is installed
            self.stop.request(StopRequest.REASONS[signal.SIGINT])
        except BundleError as exc:  # not this frame: the model itself cannot run
            fatal = exc
            end_reason = f"the model cannot run: {exc}"
        except OutputError:
            self._close_all(recorder_errors_ignored=True)
            raise
        if self.stop.reason and fatal is None:
            end_reason = self.stop.reason + ("" if self.recorder.frames else " before the first frame")
        self._close_all()
        self.counting.write_tracks(self.recorder.out)
        summary = self.summary(end_reason or getattr(self.source, "end_reason", "end of source"), complete=True)
        self.recorder.finish(summary)
        logger.info("run ended: %s; %d frames recorded, %d skipped", summary["end_reason"], summary["frames"],
                    summary["frames_skipped"])
        if fatal is not None:
            raise fatal
        return summary

    def _process(self, frame, t_cap: float) -> str | None:
        """One frame through the classifier, the recorder and the observers; returns why the run
        must end (an observer ended it) or None. A failure of this one frame is skipped and counted."""
        capture_ms = (time.perf_counter() - t_cap) * 1e3
        try:
            res, cell_extras = self.counting.process(frame)
        except BundleError:
            raise
        except Exception as exc:  # noqa: BLE001 - one bad frame must never end the run
            self.skips.add(frame, "processing", exc)
            return None
        res.timings_ms["capture"] = capture_ms
        res.cell_flags = [e.get("flag", "") for e in cell_extras]  # what cells.csv marks for review
        res.timings_ms["total"] = (time.perf_counter() - t_cap) * 1e3
        try:
            row = self.recorder.record(frame, res.detections, res.labels, res.confidences, res.timings_ms,
                                       self.memory.current_mb(), cell_extras=cell_extras,
                                       frame_extra=self.counting.frame_columns(res),
                                       red=getattr(res, "red", None))
        except OutputError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a result the recorder cannot file
            self.skips.add(frame, "recording", exc)
            return None
        if self.first_result_s is None:
            self.first_result_s = seconds_since_process_start()
        for obs in self.observers:
            try:
                if obs.on_frame(frame, res, row) is False:
                    return obs.end_reason()
            except OutputError:
                raise
            except Exception as exc:  # noqa: BLE001 - an optional output must not end the run
                self.skips.add(frame, obs.name, exc)
        if self.on_frame is not None:
            self.on_frame(row)
        if self.counting.target_reached:
            return f"target reached: {self.counting.target_wbc} white cells counted"
        return None

    def summary(self, end_reason: str | None, complete: bool) -> dict:
        progress = RunProgress(
            wall_s=time.perf_counter() - self._t_start, frames=self.recorder.frames,
            first_result_s=self.first_result_s, end_reason=end_reason, complete=complete,
            segmentation=segmentation_part(self.classifier),
            memory_mb={"peak": round(self.memory.peak_mb(), 1), "current": round(self.memory.current_mb(), 1)})
        summary = build_summary(self.recorder, self.info, progress, self.source, self.skips,
                                [*self.observers, self.counting])
        checks = getattr(self.counting, "input", None)  # grayscale, red/blue swap, bit depth (edge/input_checks.py)
        if checks is not None:
            summary["input"] = checks.report(getattr(self.source, "input_notes", None))
        domain = getattr(self.classifier, "domain", None)  # per-run domain check (edge/domain.py)
        if domain is not None:
            summary["domain"] = domain.report()
        red = getattr(self.classifier, "red_cells", None)  # the red-cell model's own domain check
        if summary.get("red_cells") and getattr(red, "domain", None) is not None:
            from hemaedge.edge.rbc_morphology import qualify

            qualify(summary["red_cells"], red.domain.report())
        rule = getattr(self.classifier, "identify_rule", None)  # which unidentified rule ran (edge/identify.py)
        if callable(rule):
            summary["identify"] = rule()
        return summary

    def _close_all(self, recorder_errors_ignored: bool = False) -> None:
        if hasattr(self.frames, "close"):
            with contextlib.suppress(Exception):
                self.frames.close()  # ends the source's generator: releases cameras and files
        for obs in self.observers:
            try:
                obs.close()
            except Exception as exc:  # noqa: BLE001 - closing one output must not lose the summary
                logger.warning("closing %s failed: %s", obs.name, exc)
        if recorder_errors_ignored:
            self.recorder.close(ignore_errors=True)


def run(source, classifier, recorder, *, annotator=None, preview=None, observers=(), on_frame=None,
        frames_iter=None, model_info: dict | None = None, load_s: float | None = None,
        stop: StopRequest | None = None, summary_every: SummaryEvery | None = None,
        output: dict | None = None, counting=None) -> dict:
    """Process every frame of `source` (or of `frames_iter`, e.g. a limited view of it) and return
    the summary, which is also written by the recorder."""
    obs = list(observers)
    if annotator is not None:
        obs.append(AnnotatingObserver(annotator))
    if preview is not None:
        obs.append(PreviewObserver(preview))
    info = RunInfo(source=source.describe() if hasattr(source, "describe") else str(source),
                   model=model_info or {}, load_s=load_s,
                   output=output or {})
    return RunLoop(source, classifier, recorder, info, frames=frames_iter, observers=obs, on_frame=on_frame,
                   stop=stop, summary_every=summary_every, counting=counting).run()
