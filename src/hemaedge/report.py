"""The report of a reviewed run: the corrected differential as self-contained HTML and as PDF.

What it holds: the model (name, bundle digest), the counts per class after the reviewer's
corrections with 95% intervals, how many cells were flagged / left unidentified / not cells,
every correction made, a gallery of the cells left unidentified, and the sha256 of each input
file, so anyone can check the report against the run it came from.

Counts and intervals come from `hemaedge.review.rundata.RunReview.differential`, the same code
the review page shows. HTML through a Jinja2 template, PDF through ReportLab.
"""
from __future__ import annotations

import base64
import datetime as dt
import html
from pathlib import Path

from hemaedge.edge.bundle import sha256_file
from hemaedge.edge.errors import OutputError
from hemaedge.review.rundata import CORRECTIONS, NOT_A_CELL, UNIDENTIFIED, RunReview, confidence_text

INPUT_FILES = ("cells.csv", CORRECTIONS, "summary.json", "counts.csv")
GALLERY_MAX = 60


def bundle_digest(summary: dict) -> tuple[str | None, str]:
    """(sha256 of the bundle's manifest, where it was read): the device store's identity of a bundle."""
    model = summary.get("model") or {}
    if model.get("manifest_sha256"):
        return model["manifest_sha256"], "recorded by the run"
    path = Path(model.get("path") or "")
    if path and (path / "manifest.json").is_file():
        return sha256_file(path / "manifest.json"), f"manifest.json of {path}, read when the report was made"
    return None, "bundle not found (the run names no bundle folder, or it has been removed)"


def unidentified_cells(run: RunReview) -> list:
    """Cells still of class 'unidentified', or flagged by the model and never reviewed (a cell the
    run did not classify, cut by the frame edge, is never flagged: not among them)."""
    return [c for c in run.cells
            if c.current == UNIDENTIFIED or (c.flagged and not c.reviewed and c.current != NOT_A_CELL)]


def _confidence(cell) -> float | None:
    """None (JSON null) for a cell the run did not classify."""
    return None if cell.confidence != cell.confidence else cell.confidence


def report_data(run_dir, reviewer: str = "") -> dict:
    run = RunReview.open(run_dir)
    digest, digest_where = bundle_digest(run.summary)
    inputs = [{"file": name, "sha256": sha256_file(run.root / name), "bytes": (run.root / name).stat().st_size}
              for name in INPUT_FILES if (run.root / name).is_file()]
    unid = unidentified_cells(run)
    reviewers = sorted({r.get("reviewer", "") for r in run.log if r.get("reviewer")})
    return {
        "run": str(run.root.resolve()), "run_name": run.root.resolve().name,
        "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "reviewer": reviewer or ", ".join(reviewers) or "not named",
        "model": (run.summary.get("model") or {}).get("name") or "unknown",
        "bundle_digest": digest, "bundle_digest_where": digest_where,
        "frames": run.summary.get("frames"), "started_utc": run.summary.get("started_utc"),
        "flag_rule": flag_rule(run.summary),
        "differential": run.differential(),
        "changes": [{"cell": c.key, "frame_name": c.name, "model_class": c.model_class, "class": c.current,
                     "confidence": _confidence(c)} for c in run.cells if c.current != c.model_class],
        "log": run.log,
        "unidentified": [{"cell": c.key, "class": c.current, "confidence": _confidence(c),
                          "crop": str(run.root / "crops" / c.crop) if c.crop else None} for c in unid],
        "inputs": inputs,
    }


def flag_rule(summary: dict) -> str:
    """Why the run flagged cells, in words, from summary.json (the two-tier OOD rule and any class policy)."""
    ident = summary.get("identify") or {}
    ood = ident.get("ood") or {}
    parts = []
    if ood.get("review_level") is not None:
        parts.append(f"top probability below {ood['review_level']:.3g} ({ood.get('flag_source', 'bundle')} level)")
    elif summary.get("review_threshold") is not None:
        parts.append(f"confidence below {summary['review_threshold']}")
    if ident.get("review_classes"):
        parts.append("every " + ", ".join(c.replace("_", " ") for c in ident["review_classes"]) + " call")
    return "; ".join(parts) or "rule not recorded"


def _img_data_uri(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def render_html(data: dict) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(Path(__file__).parent / "review" / "templates"),
                      autoescape=select_autoescape(["html"]))
    env.filters["conf"] = confidence_text
    gallery = [dict(c, uri=_img_data_uri(c["crop"])) for c in data["unidentified"][:GALLERY_MAX]]
    return env.get_template("report.html").render(d=data, gallery=gallery, gallery_max=GALLERY_MAX)


def render_pdf(data: dict, path: Path) -> None:
    from reportlab.lib import colors
    from reportlab.lib.pagesizes import A4
    from reportlab.lib.styles import getSampleStyleSheet
    from reportlab.lib.units import mm
    from reportlab.platypus import Image, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

    styles = getSampleStyleSheet()
    small = styles["BodyText"].clone("small", fontSize=7.5, leading=9)
    mono = styles["Code"].clone("mono", fontSize=6.5, leading=8)
    P = lambda text, st=styles["BodyText"]: Paragraph(html.escape(str(text)), st)  # noqa: E731
    grid = TableStyle([("GRID", (0, 0), (-1, -1), 0.25, colors.grey), ("FONTSIZE", (0, 0), (-1, -1), 8),
                       ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8eef5")),
                       ("ALIGN", (1, 1), (-1, -1), "RIGHT")])
    d = data["differential"]
    story = [Paragraph("Corrected differential", styles["Title"]),
             P(f"Run {data['run_name']} ({data['frames']} frames, started {data['started_utc']}); "
               f"report made {data['created_utc']}; reviewer: {data['reviewer']}."),
             P(f"Model {data['model']}; bundle digest (sha256 of manifest) "
               f"{data['bundle_digest'] or 'unknown'} ({data['bundle_digest_where']})."),
             P(f"{d['cells']} cells counted; {d['flagged']} flagged by the model ("
               f"{data['flag_rule']}), {d['flagged_unreviewed']} of them not reviewed; "
               f"{d['unidentified']} unidentified; {d['not_a_cell']} marked 'not a cell'; "
               f"{d['not_counted']} not counted by the run; "
               f"{d['changed']} cells changed by {d['corrections']} reviewer actions."),
             Spacer(1, 3 * mm)]
    rows = [["class", "count", "%", "95% interval (%)", "flagged"]]
    rows += [[r["class"].replace("_", " "), r["count"], f"{r['percent']:.1f}",
              f"{r['ci95_low']:.1f} - {r['ci95_high']:.1f}", r["flagged"]] for r in d["rows"]]
    story += [Table(rows, style=grid, hAlign="LEFT"), Spacer(1, 2 * mm),
              P("Intervals: 95% Clopper-Pearson (exact binomial) interval of each class's share of the counted cells, as edge/differential.py computes it for the run.", small),
              Spacer(1, 3 * mm), Paragraph("Reviewer's corrections", styles["Heading2"])]
    if data["changes"]:
        crow = [["cell", "frame", "model said", "reviewer's class"]]
        crow += [[c["cell"], c["frame_name"], f"{c['model_class']} ({confidence_text(c['confidence'])})" if c["confidence"] is not None else c["model_class"], c["class"]]
                 for c in data["changes"]]
        story.append(Table(crow, style=grid, hAlign="LEFT", repeatRows=1))
    else:
        story.append(P("None: every cell kept the model's class."))
    if data["log"]:
        story.append(P(f"Full log ({len(data['log'])} actions, corrections.csv): "
                       + "; ".join(f"{r['time_utc']} {r['frame']}:{r['cell']} {r['old_class']}->{r['new_class']}"
                                   f" ({r['action']})" for r in data["log"][:300]), small))
    story.append(Paragraph(f"Unidentified cells ({len(data['unidentified'])})", styles["Heading2"]))
    pics = [Image(c["crop"], width=22 * mm, height=22 * mm) for c in data["unidentified"][:GALLERY_MAX] if c["crop"]]
    if pics:
        story.append(Table([pics[i:i + 7] for i in range(0, len(pics), 7)], hAlign="LEFT"))
    else:
        story.append(P("None (or no crops saved: run with --save-crops)."))
    story += [Paragraph("Inputs", styles["Heading2"]),
              P((f"Signed with key {data['signed_by']}: the signature is in report.json next to this file."
                 if data.get("signed_by") else "Not signed.")
                + " report.json lists the sha256 of this document, of the HTML and of every input.", small)]
    story += [P(f"{i['file']}  {i['bytes']} bytes  sha256 {i['sha256']}", mono) for i in data["inputs"]]
    doc = SimpleDocTemplate(str(path), pagesize=A4, leftMargin=15 * mm, rightMargin=15 * mm,
                            topMargin=14 * mm, bottomMargin=14 * mm, title=f"hemaedge report {data['run_name']}",
                            author=data["reviewer"])
    doc.build(story)


REPORT_FORMAT = "hemaedge-report"


def write_report(run_dir, out_dir=None, *, reviewer: str = "", force: bool = False, sign_key=None) -> list[Path]:
    """Write report.html, report.pdf and report.json (into RUN_DIR unless out_dir); never over an
    existing report unless forced. report.json lists the sha256 of both documents and of every
    input; with `sign_key` (edge.signing.SigningKey) it carries an Ed25519 signature over that list."""
    from hemaedge.edge.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text

    data = report_data(run_dir, reviewer)
    data["signed_by"] = sign_key.key_id if sign_key is not None else None
    out = Path(out_dir or run_dir)
    targets = [out / "report.html", out / "report.pdf", out / "report.json"]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not force:
        raise OutputError(f"{', '.join(existing)} already exist(s): pass --out to write elsewhere, "
                          "or --force to replace it")
    out.mkdir(parents=True, exist_ok=True)
    tmp_pdf = out / ".report.pdf.partial"
    try:
        render_pdf(data, tmp_pdf)
        atomic_write_bytes(targets[1], tmp_pdf.read_bytes())
    finally:
        tmp_pdf.unlink(missing_ok=True)
    atomic_write_text(targets[0], render_html(data))
    record = {"format": REPORT_FORMAT, "run": data["run"], "created_utc": data["created_utc"],
              "reviewer": data["reviewer"], "model": data["model"], "bundle_digest": data["bundle_digest"],
              "documents": {p.name: sha256_file(p) for p in targets[:2]},
              "inputs": {i["file"]: i["sha256"] for i in data["inputs"]},
              "differential": data["differential"]}
    if sign_key is not None:
        from hemaedge.edge.signing import sign_manifest

        record = sign_manifest(record, sign_key)
    atomic_write_json(targets[2], record)
    return targets


def check_report(report_dir, public_key_path=None, run_dir=None) -> list[str]:
    """Problems with a report (empty = it checks out): its documents' digests, the signature (when a
    public key is given) and, when the run folder is at hand, whether its inputs changed since."""
    import json

    from hemaedge.edge.errors import BundleError, DataError
    from hemaedge.edge.signing import check_signature, read_public_key

    path = Path(report_dir) / "report.json"
    if not path.is_file():
        raise DataError(f"{report_dir}: no report.json (make the report with `hemaedge report RUN_DIR`)")
    record = json.loads(path.read_text(encoding="utf-8"))
    problems = []
    for name, digest in (record.get("documents") or {}).items():
        doc = Path(report_dir) / name
        if not doc.is_file() or sha256_file(doc) != digest:
            problems.append(f"{name} differs from the one the report recorded (changed or missing)")
    if public_key_path is not None:
        pub = read_public_key(public_key_path)
        try:
            check_signature(record, {pub.key_id: pub})
        except BundleError as exc:
            problems.append(str(exc).replace("the bundle", "the report").replace("bundle", "report"))
    run = Path(run_dir or record.get("run") or "")
    if run_dir is not None or run.is_dir():
        for name, digest in (record.get("inputs") or {}).items():
            f = run / name
            if not f.is_file() or sha256_file(f) != digest:
                problems.append(f"{f} changed since the report was made (e.g. more corrections): make a new report")
    return problems
