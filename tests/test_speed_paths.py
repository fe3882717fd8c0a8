"""The fast paths of the counting pipeline (issue 12, speed) give the results of the plain
formulas they replace: exactly for the background colour, the hole filling and the ruler's
peaks (same boxes, labels and probabilities on samples/), and within a tested tolerance for the
stage motion measured on a smaller copy (same count on a generated pan)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from hemaedge.edge import pipeline, ruler, segment, tracking
from hemaedge.edge import preprocess as pp
from hemaedge.edge.preprocess import InputContract, read_image_rgb

REPO = Path(__file__).resolve().parents[1]
SAMPLES = sorted((REPO / "samples").rglob("*.jpg"))
DEFAULT_CONTRACT = InputContract.from_dict(
    __import__("json").loads((REPO / "src/hemaedge/models/default/manifest.json").read_text())["input"])


# ----------------------------------------------------------------------------- the formulas replaced


def background_colour_reference(image):
    grey = image[::4, ::4].reshape(-1, 3)
    brightness = grey.sum(1, dtype=np.int32)
    bright = grey[brightness >= np.percentile(brightness, 75)]
    return np.median(bright, axis=0).astype(np.uint8)


def fill_holes_reference(mask):
    inv = (mask == 0).astype(np.uint8)
    n, lab = cv2.connectedComponents(inv)
    touches_border = np.zeros(n, bool)
    touches_border[np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])] = True
    out = mask.copy()
    out[(inv > 0) & ~touches_border[lab]] = 255
    return out


def disc_peaks_reference(dist, min_value=3.0):
    return dist[(dist == cv2.dilate(dist, ruler.PEAK_DISC)) & (dist > min_value)]


def stage_small_reference(self, image, grey=None):
    """StageMotion's copy before the speed work: 256 px wide, from the full-size grey frame."""
    h, w = image.shape[:2]
    self._scale = min(1.0, 256 / w)
    g = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if self._scale < 1.0:
        g = cv2.resize(g, (round(w * self._scale), round(h * self._scale)), interpolation=cv2.INTER_AREA)
    return g.astype(np.float32)


def components_reference(mask):
    return cv2.connectedComponentsWithStats(mask, connectivity=8)  # 32-bit labels


def upper_quartile_cut_reference(values):
    return np.percentile(values, 75)


def crops_for_reference(image, dets):
    """CellClassifier.crops_for before the speed work: the background colour of every frame with
    a platelet and a nucleated cell, each platelet crop a painted copy."""
    nucleated = [d.box for d in dets if d.kind == "wbc"]
    out = []
    for d in dets:
        crop = segment.extract_crop(image, d.crop)
        if (d.kind == "platelet" or d.size_ambiguous) and nucleated:
            fill = background_colour_reference(image)
            others = [b for b in nucleated
                      if b != d.box and not (b[0] <= d.centre[0] <= b[2] and b[1] <= d.centre[1] <= b[3])]
            cx, cy, side = d.crop
            x0, y0 = cx - side // 2, cy - side // 2
            crop = crop.copy()
            for bx0, by0, bx1, by1 in others:
                a, b = max(0, bx0 - x0), max(0, by0 - y0)
                c, e = min(side, bx1 - x0), min(side, by1 - y0)
                if c > a and e > b:
                    crop[b:e, a:c] = fill
        out.append(crop)
    return out


def apply_preprocess_reference(image, contract):
    """apply_preprocess before the batched path: crop by crop, each conversion on its own crop."""
    img = pp.resize(image, contract.size)
    spec, mode = contract.normalize, contract.preprocess
    op = cv2.createCLAHE(clipLimit=float(contract.clahe_clip), tileGridSize=(contract.clahe_tiles,) * 2)
    if spec is not None:
        lab = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2LAB)
        lab = cv2.LUT(lab, pp._colour_lut(spec, pp.colour_anchors(img, lab=lab)))
        if contract.one_lab_pass and mode == "clahe":
            lab[..., 0] = op.apply(lab[..., 0])
            return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
        img = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    if mode == "clahe":
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)
        lab[..., 0] = op.apply(lab[..., 0])
        img = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)
    elif mode == "otsu-mask":
        img = pp.otsu_mask(img)
    elif mode == "masked-rgb":
        img = pp.masked_rgb(img)
    return img


def preprocess_batch_reference(images, contract):
    return np.stack([apply_preprocess_reference(img, contract) for img in images]) if len(images) \
        else np.zeros((0, contract.size, contract.size, 3), np.uint8)


def blurred_green_reference(work):
    return cv2.GaussianBlur(work.image[..., 1], (5, 5), 0)


def _random_images(rng, n):
    for k in range(n):
        h, w = (int(v) for v in rng.integers(1, 70, 2))
        if k % 3 == 0:  # few distinct values: ties everywhere
            yield (rng.integers(0, 3, (h, w, 3)) * 120).astype(np.uint8)
        else:
            yield rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- exact replacements


def test_background_colour_is_the_median_of_the_brightest_quarter():
    for f in SAMPLES:
        img = read_image_rgb(f)
        assert np.array_equal(pipeline.background_colour(img), background_colour_reference(img)), f.name
    for img in _random_images(np.random.default_rng(0), 300):
        assert np.array_equal(pipeline.background_colour(img), background_colour_reference(img)), img.shape


def test_upper_quartile_cut_selects_what_the_75th_percentile_selects():
    rng = np.random.default_rng(3)
    for k in range(500):
        n = int(rng.integers(1, 400))
        v = rng.integers(0, int(rng.choice([2, 5, 766])), n).astype(np.int16)
        cut = segment.upper_quartile_cut(v)
        assert np.array_equal(v >= cut, v >= np.percentile(v, 75)), (k, n)


def test_components_with_16_bit_labels_are_the_32_bit_components():
    rng = np.random.default_rng(4)
    masks = [(rng.random((int(rng.integers(1, 80)), int(rng.integers(1, 80)))) < rng.uniform(0.1, 0.9)).astype(np.uint8)
             for _ in range(100)]
    worst = np.zeros((511, 511), np.uint8)
    worst[::2, ::2] = 1  # one component per 2x2 block: 65,536 of them, labels need 32 bits
    masks += [worst, worst[:509, :509].copy()]  # 65,025 components: 16 bits are enough
    for k, m in enumerate(masks):
        n, lab, st, cen = segment.components(m)
        rn, rlab, rst, rcen = components_reference(m)
        assert n == rn and np.array_equal(lab, rlab) and np.array_equal(st, rst) and np.allclose(cen, rcen), k
    assert segment.components(masks[-1])[1].dtype == np.uint16 and segment.components(worst)[1].dtype == np.int32


def test_fill_holes_fills_exactly_the_enclosed_background():
    rng = np.random.default_rng(1)
    for k in range(300):
        h, w = (int(v) for v in rng.integers(1, 50, 2))
        mask = (rng.random((h, w)) < rng.uniform(0.2, 0.8)).astype(np.uint8) * np.uint8(rng.choice([1, 7, 255]))
        assert np.array_equal(segment._fill_holes(mask), fill_holes_reference(mask)), k
    ring = np.zeros((9, 9), np.uint8)
    ring[2:7, 2:7] = 255
    ring[3:6, 3:6] = 0  # a pale centre
    assert segment._fill_holes(ring)[4, 4] == 255 and segment._fill_holes(ring)[0, 0] == 0


def _distance_maps():
    for f in SAMPLES:
        img = read_image_rgb(f)
        work = segment.work_copy(img)
        green = cv2.GaussianBlur(work.image[..., 1], (5, 5), 0)
        cells = (green < np.median(green)).astype(np.uint8) * 255
        yield f.name, cv2.distanceTransform(segment._fill_holes(cells), cv2.DIST_L2, 5)
    rng = np.random.default_rng(2)
    for k in range(40):  # plateaus and ties
        yield f"random {k}", np.round(rng.random((int(rng.integers(5, 60)), int(rng.integers(5, 60)))) * 8).astype(np.float32)


def test_disc_peaks_are_the_local_maxima_over_the_disc():
    assert ruler.PEAK_DISC[tuple(np.array(ruler._INNER.shape) // 2)] and ruler._INNER.shape[0] > 3
    for name, dist in _distance_maps():
        assert np.array_equal(ruler.disc_peaks(dist), disc_peaks_reference(dist)), name


def test_same_cells_labels_and_probabilities_on_the_samples(monkeypatch):
    """The whole classifier on samples/ with the fast paths and with the formulas they replace."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.defaults import load_model

    model = load_model(REPO / "src" / "hemaedge" / "models" / "default")
    backend = load_backend(model, threads=1)
    images = [read_image_rgb(f) for f in SAMPLES]

    def results():
        clf = pipeline.CellClassifier(model, backend)
        out = []
        for img in images:
            r = clf.process(img)
            out.append((r.status, r.labels, [d.box for d in r.detections], [d.crop for d in r.detections],
                        r.probabilities.tolist(), r.ruler.diameter if r.ruler else None))
        return out

    fast = results()
    monkeypatch.setattr(pipeline, "background_colour", background_colour_reference)
    monkeypatch.setattr(ruler, "_fill_holes", fill_holes_reference)
    monkeypatch.setattr(ruler, "disc_peaks", disc_peaks_reference)
    monkeypatch.setattr(segment, "components", components_reference)
    monkeypatch.setattr(segment, "upper_quartile_cut", upper_quartile_cut_reference)
    monkeypatch.setattr(pp, "preprocess_batch", preprocess_batch_reference)
    monkeypatch.setattr(segment.WorkCopy, "blurred_green", blurred_green_reference)
    assert results() == fast
    assert sum(len(r[1]) for r in fast) > 5  # the samples have cells, platelet crops painted included


def test_crops_are_painted_as_before_with_the_background_colour_only_where_needed(bccd, monkeypatch):
    """crops_for takes the frame's background colour only when a nucleated cell's box lies in a
    platelet crop: the same crops, byte for byte, as painting with it in every such frame."""
    from hemaedge.edge.defaults import load_model

    clf = pipeline.CellClassifier(load_model(None), backend=None)
    frames = [read_image_rgb(f) for f in SAMPLES + sorted((bccd / "JPEGImages").glob("*.jpg"))[:120:2]]
    found = [(img, clf.find_cells(img)[2]) for img in frames]
    calls = []
    monkeypatch.setattr(pipeline, "background_colour", lambda im: calls.append(1) or background_colour_reference(im))
    painted = 0
    for img, dets in found:
        got, want = clf.crops_for(img, dets), crops_for_reference(img, dets)
        assert len(got) == len(want) and all(np.array_equal(a, b) for a, b in zip(got, want))
        painted += sum(not np.array_equal(a, segment.extract_crop(img, d.crop)) for a, d in zip(got, dets))
    assert painted > 0 and 0 < len(calls) < len(frames)  # some crops painted; frames without need skipped


def _contracts():
    d = DEFAULT_CONTRACT.to_dict()
    yield "default", DEFAULT_CONTRACT
    yield "one Lab pass", InputContract.from_dict({**d, "one_lab_pass": True})
    yield "normalise only", InputContract.from_dict({**d, "preprocess": "rgb"})
    plain = {k: v for k, v in d.items() if k != "normalize"}
    for mode in ("clahe", "rgb", "otsu-mask", "masked-rgb"):
        yield mode, InputContract.from_dict({**plain, "preprocess": mode})
    yield "96 px, CLAHE 3.0 / 4 tiles", InputContract.from_dict({**d, "size": 96, "clahe_clip": 3.0, "clahe_tiles": 4})


def test_preprocess_batch_gives_each_crop_the_pixels_of_its_own_preprocessing(bccd, pbc_raw_val):
    """The batched path (one Lab conversion per stack of a frame's crops) against the crop-by-crop
    formula, byte for byte: the crops edge run cuts from real BCCD frames and PBC fields (one
    batch per frame, as the device prepares them), and stacks with degenerate crops (black,
    white, all stained, one tone) among real ones."""
    from hemaedge.edge.defaults import load_model

    clf = pipeline.CellClassifier(load_model(None), backend=None)
    files = SAMPLES + sorted((bccd / "JPEGImages").glob("*.jpg"))[:120:4] + sorted(pbc_raw_val.rglob("*.jpg"))[:300:20]
    batches = [clf.find_cells(read_image_rgb(f))[3] for f in files]
    assert sum(len(b) for b in batches) > 60 and max(len(b) for b in batches) >= 4
    rng = np.random.default_rng(8)
    odd = [np.zeros((40, 40, 3), np.uint8), np.full((150, 150, 3), 255, np.uint8),
           np.dstack([np.full((90, 90), 60, np.uint8), np.full((90, 90), 20, np.uint8), np.full((90, 90), 200, np.uint8)]),
           np.full((128, 128, 3), (230, 200, 210), np.uint8), *_random_images(rng, 6)]
    batches += [[*odd, *batches[2]], odd[:1], []]
    for name, contract in _contracts():
        for k, crops in enumerate(batches):
            got = pp.preprocess_batch(crops, contract)
            assert got.dtype == np.uint8 and got.shape == (len(crops), contract.size, contract.size, 3)
            assert np.array_equal(got, preprocess_batch_reference(crops, contract)), (name, k)
        one = batches[2][0]
        assert np.array_equal(pp.apply_preprocess(one, contract), apply_preprocess_reference(one, contract)), name
    tensor = pp.prepare_batch(batches[2], DEFAULT_CONTRACT)
    assert tensor.dtype == np.float32 and np.array_equal(tensor, preprocess_batch_reference(batches[2], DEFAULT_CONTRACT))
    with pytest.raises(pp.FrameFormatError, match="uint8 RGB"):
        pp.preprocess_batch([np.zeros((20, 20), np.uint8)], DEFAULT_CONTRACT)


def test_one_blurred_green_per_frame_is_the_blur_each_stage_made(bccd):
    """WorkCopy.blurred_green (made once, shared by the ruler and the platelets' red-cell level)
    is the 5x5 blur of the work copy's green, and the red-cell level taken from it is the same."""
    for f in SAMPLES + sorted((bccd / "JPEGImages").glob("*.jpg"))[:60:6]:
        work = segment.work_copy(read_image_rgb(f))
        green = work.blurred_green()
        assert np.array_equal(green, blurred_green_reference(work)) and work.blurred_green() is green, f.name
        shared, own = segment.red_cell_level(work.image, work.mask, green), segment.red_cell_level(work.image, work.mask)
        assert np.array_equal(shared[0], own[0]) and shared[1] == own[1], f.name


def test_sharpness_is_the_variance_of_the_laplacian():
    from hemaedge.edge import focus

    for f in SAMPLES:
        img = read_image_rgb(f)
        for g in (focus.grey_small(img), cv2.GaussianBlur(focus.grey_small(img), (0, 0), 3)):
            ref = float(cv2.Laplacian(g, cv2.CV_32F).var())
            assert focus.sharpness(img, g) == pytest.approx(ref, rel=1e-5), f.name


def robust_spread_reference(s):
    sub = s[::2, ::2]
    return 1.4826 * float(np.median(np.abs(sub - np.median(sub))))


def test_robust_spread_is_the_median_absolute_deviation_of_real_stain_channels(bccd, pbc_raw_val):
    files = sorted((bccd / "JPEGImages").glob("*.jpg"))[::3] + sorted(pbc_raw_val.rglob("*.jpg"))[:400:8]
    for f in SAMPLES + files:
        s = segment.work_copy(read_image_rgb(f)).stain
        assert segment.robust_spread(s) == robust_spread_reference(s), f.name


def test_robust_spread_and_median_f32_on_odd_and_degenerate_arrays():
    rng = np.random.default_rng(5)
    arrays = [np.zeros((7, 9), np.float32), np.full((2, 2), 3.5, np.float32), np.ones((1, 1), np.float32),
              rng.normal(0, 8, (241, 321)).astype(np.float32), rng.normal(40, 0.01, (50, 64)).astype(np.float32),
              np.round(rng.normal(0, 3, (120, 160))).astype(np.float32),  # many ties
              rng.exponential(5, (99, 101)).astype(np.float32)]
    for a in arrays:
        assert segment.robust_spread(a) == robust_spread_reference(a)
        flat = a.ravel()
        # guesses right, off by far, and too narrow: the same value (a wrong guess costs time only)
        for guess, width in ((float(np.median(flat)), 1.0), (1e6, 1.0), (-1e6, 5.0), (0.0, 0.0), (0.0, 1e9)):
            m = segment.median_f32(flat.copy(), guess, width)
            assert m == np.median(flat) and np.asarray(m).dtype == np.float32
        for part in (flat, flat[:-1] if flat.size > 1 else flat, flat[:1], flat[:2]):  # no guess: odd and even counts
            m = segment.median_f32(part.copy())
            assert m == np.median(part) and np.asarray(m).dtype == np.float32


def test_stain_channel_median_and_platelet_means_are_numpys(bccd):
    """stain_channel's background level (median_f32 without a guess) and the platelet scores
    (mean_f32 of a body's stain and blue minus red) are np.median's and np.mean's values, bit
    for bit, on real work copies and on sizes where numpy's pairwise float32 sum rounds."""
    for f in SAMPLES + sorted((bccd / "JPEGImages").glob("*.jpg"))[::10]:
        small = segment.work_image(read_image_rgb(f))
        _, g, b = cv2.split(small)
        raw = cv2.GaussianBlur(cv2.subtract(b, g, dtype=cv2.CV_32F), (5, 5), 0)
        assert segment.median_f32(raw[::4, ::4].ravel()) == np.median(raw[::4, ::4]), f.name
        s = segment.stain_channel(small)
        for part in (s.ravel()[:37], s[s > 10], s.ravel()):
            assert segment.mean_f32(part) == float(part.mean()), f.name
    rng = np.random.default_rng(7)
    for n in (1, 2, 7, 8, 9, 127, 128, 129, 1000, 4099, 100_001):
        a = rng.normal(30, 200, n).astype(np.float32)
        assert segment.mean_f32(a) == float(a.mean()), n


# ----------------------------------------------------------------------------- tolerance: stage motion


@pytest.fixture(scope="module")
def pan(bccd):
    from hemaedge.benchmarks.tools.live_feed import mosaic, path, render, whole_cell_frames

    rng = np.random.default_rng(3)
    canvas, _ = mosaic(bccd, whole_cell_frames(bccd, "val")[:6])
    pts = path(rng, canvas.shape)
    return render(canvas, pts, rng), pts


def _moves(frames, small=None):
    m = tracking.StageMotion()
    if small is not None:
        m._small = small.__get__(m)
    steps, lost, prev = [], [], np.zeros(2)
    for f in frames:
        lost.append(not m.update(f))
        steps.append(m.offset - prev)
        prev = m.offset.copy()
    return np.array(steps), lost


def test_stage_motion_on_a_small_copy_is_as_accurate_on_a_generated_pan(pan):
    frames, pts = pan
    true = -np.diff(np.array([(x, y) for x, y, _ in pts]), axis=0)  # the content moves against the window
    fast, fast_lost = _moves(frames)
    ref, ref_lost = _moves(frames, stage_small_reference)
    assert fast_lost == ref_lost  # the same frames registered
    slow = np.array([s == "pan" for _, _, s in pts[1:]])  # slow pans between sharp frames
    err = np.hypot(*(fast[1:] - true).T)
    err_ref = np.hypot(*(ref[1:] - true).T)
    assert np.median(err[slow]) <= 1.0 and np.percentile(err[slow], 95) <= 2.0
    assert np.percentile(err[slow], 95) <= np.percentile(err_ref[slow], 95) + 0.5


def test_same_count_on_a_generated_pan_as_with_the_larger_motion_copy(pan, monkeypatch):
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.counting import CountingSession
    from hemaedge.edge.defaults import load_model
    from hemaedge.edge.sources import Frame

    model = load_model(REPO / "src" / "hemaedge" / "models" / "default")
    backend = load_backend(model, threads=2)
    frames, _ = pan

    def count():
        session = CountingSession(pipeline.CellClassifier(model, backend, same_slide=True), one_slide=True)
        for i, f in enumerate(frames):
            session.process(Frame(i, f, f"pan#{i}", 0.0))
        d = session.differential().summary()
        return d["white_cells_classified"], d["unidentified"], d["nrbc"]["count"], d["platelets"]["count"]

    fast = count()
    monkeypatch.setattr(tracking.StageMotion, "_small", stage_small_reference)
    assert count() == fast
    assert sum(fast[:3]) >= 3


def test_same_count_and_focus_verdicts_with_grey_from_the_small_colour_copy(pan, monkeypatch):
    """The grey copy for the blank check, the focus gate and the stage motion comes from the
    segmenter's small colour copy, not the whole frame: on a generated pan the same frames are
    rejected (for the same reasons) and the same cells are counted as with the whole frame's grey."""
    from hemaedge.edge.backends import load_backend
    from hemaedge.edge.counting import CountingSession
    from hemaedge.edge.defaults import load_model
    from hemaedge.edge.sources import Frame

    model = load_model(REPO / "src" / "hemaedge" / "models" / "default")
    backend = load_backend(model, threads=2)
    frames, _ = pan

    def count():
        session = CountingSession(pipeline.CellClassifier(model, backend, same_slide=True), one_slide=True)
        statuses = [session.process(Frame(i, f, f"pan#{i}", 0.0))[0].status for i, f in enumerate(frames)]
        d = session.differential().summary()
        return (d["white_cells_classified"], d["unidentified"], d["nrbc"]["count"], d["platelets"]["count"],
                [(i, s) for i, s in enumerate(statuses) if s.startswith("not classified")], session.motion.lost)

    small = count()
    assert small[4]  # the pan has blurred frames the gate rejects
    monkeypatch.delattr(pipeline.CellClassifier, "work_image")  # the whole frame's grey, as before
    whole = count()
    assert small == whole


# ----------------------------------------------------------------------------- exact: the tracker


class _TrackerReference(tracking.Tracker):
    """Tracker.update before the speed work: each detection against each open track in turn."""

    def update(self, frame_index, detections, slide_xy, probs):
        self._close_old(frame_index)
        pairs = []
        for i, (det, xy) in enumerate(zip(detections, slide_xy)):
            kind = tracking.segment_kind(det)
            for j, t in enumerate(self.tracks):
                if t.kind != kind or t.last_frame == frame_index:
                    continue
                dist = float(np.hypot(*(np.asarray(xy) - t.slide_xy)))
                gate = self.gate if frame_index - t.last_frame <= self.recent_frames else self.reacquire_gate
                if dist <= max(self.min_gate_px, gate * max(det.size, t.size)):
                    pairs.append((dist, i, j))
        pairs.sort()
        owner, used = {}, set()
        for _, i, j in pairs:
            if i not in owner and j not in used:
                owner[i] = j
                used.add(j)
        ids = []
        for i, (det, xy) in enumerate(zip(detections, slide_xy)):
            if i in owner:
                t = self.tracks[owner[i]]
                t.slide_xy = (t.slide_xy * t.views + np.asarray(xy)) / (t.views + 1)
                t.size = max(t.size, det.size)
            else:
                t = tracking.Track(self._next_id, tracking.segment_kind(det), np.asarray(xy, np.float64),
                                   float(det.size), frame_index, frame_index)
                self._next_id += 1
                self.tracks.append(t)
            t.last_frame = frame_index
            t.views += 1
            t.full_views += not det.at_edge
            ambiguous = bool(getattr(det, "size_ambiguous", False))
            t.ambiguous_views += ambiguous
            t.clump_views += ambiguous and det.kind == "platelet"
            t.on_red_cell_views += bool(getattr(det, "on_red_cell", False))
            if probs is not None and len(probs):
                t.prob_sum = probs[i].astype(np.float64) if t.prob_sum is None else t.prob_sum + probs[i]
            ids.append(t.id)
        return ids


def test_tracker_matches_all_open_tracks_at_once_as_one_by_one():
    """Hundreds of open tracks (a long live feed), cells seen again at jittered places, missed
    for a while, new ones, ties in size and distance, frames without cells: the same track of
    every detection and the same tracks as the one-track-at-a-time loop."""
    rng = np.random.default_rng(11)
    cells = [(rng.uniform(0, 3000), rng.uniform(0, 2000), int(rng.integers(8, 90)),
              str(rng.choice(["wbc", "platelet"])), bool(rng.random() < 0.2)) for _ in range(400)]
    fast, ref = tracking.Tracker(keep_frames=60), _TrackerReference(keep_frames=60)
    seen = 0
    for frame in range(160):
        shown = [c for c in cells if rng.random() < 0.04]
        dets, xy = [], []
        for x, y, size, kind, ambiguous in shown:
            dets.append(segment.Detection((0, 0, size, size), kind, size * size, at_edge=bool(rng.random() < 0.1),
                                          size_ambiguous=ambiguous))
            jitter = rng.normal(0, 4, 2) if rng.random() < 0.9 else rng.normal(0, 60, 2)
            xy.append((float(np.round(x + jitter[0])), float(np.round(y + jitter[1]))))  # rounded: ties
        probs = rng.dirichlet(np.ones(5), len(dets)).astype(np.float32)
        assert fast.update(frame, dets, xy, probs) == ref.update(frame, dets, xy, probs), frame
        seen += len(dets)
    assert seen > 1500 and len(fast.tracks) > 50
    key = lambda t: (t.id, t.kind, t.slide_xy.tolist(), t.size, t.views, t.full_views, t.clump_views,
                     t.last_frame, t.prob_sum.tolist())
    assert [key(t) for t in fast.all_tracks()] == [key(t) for t in ref.all_tracks()]
    assert any(t.views > 1 for t in fast.all_tracks())
