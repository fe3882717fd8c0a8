"""`hemaedge data ...`: look at, check, fetch data sets and make calibration data.

Argument parsing and printing only; the work is in the data package
`hemaedge.train.data`.
"""
from __future__ import annotations

import json
import shlex
import time

import click

from hemaedge.edge.cli_support import FiniteFloat, user_errors

PATH_HELP = ("a MedMNIST .npz, an image tree ({train,val,test}/{class}/*.jpg or {class}/*.jpg), "
             "or a name (bloodmnist, bloodmnist_128, ...) looked up in $HEMAEDGE_DATA and the cache")
CLASSES_OPTION = click.option("--classes", "classes", type=click.Path(dir_okay=False),
                              help="Text file with one class name per line (label order). "
                                   "Default: classes.txt in the tree, BloodMNIST's order, or sorted names.")


@click.group()
def data():
    """Inspect and verify data sets (MedMNIST .npz, ImageFolder trees); make calibration data.

    \b
    Examples:
      hemaedge data info ../shared/data/bloodmnist128
      hemaedge data verify ../shared/data/bloodmnist28/bloodmnist.npz
      hemaedge data calibration --data ../shared/data/bloodmnist128 --out calibration_data
      hemaedge data fetch bloodmnist --size 128        (online machines)
    """


def _table(header, rows) -> str:
    """Plain aligned text table: first column left, the rest right-aligned."""
    cells = [header] + rows
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)  # noqa: E731
                              for i, (c, w) in enumerate(zip(r, widths)))
    line = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), line, *[fmt(r) for r in rows[:-1]], line, fmt(rows[-1])])


def _hist(d: dict) -> str:
    return ", ".join(f"{k} ({v:,})" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "-"


@data.command()
@click.argument("path")
@CLASSES_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@user_errors
def info(path, classes, as_json):
    """Splits, per-class counts, image size and mode of a data set at PATH.

    PATH is a MedMNIST .npz, an image tree ({train,val,test}/{class}/*.jpg or {class}/*.jpg,
    the latter split stratified 72/8/20 with seed 42), or a name (bloodmnist, bloodmnist_128,
    ...) looked up in $HEMAEDGE_DATA and the download cache.
    """
    from hemaedge.train.data import describe, open_dataset

    summary = describe(open_dataset(path, classes=classes))
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    splits = list(summary["splits"])
    rows = [[c] + [f"{summary['splits'][s]['per_class'][k]:,}" for s in splits]
            for k, c in enumerate(summary["classes"])]
    rows.append(["total"] + [f"{summary['splits'][s]['count']:,}" for s in splits])
    kinds = {"npz": "MedMNIST .npz", "tree": "image tree with split folders",
             "flat-tree": "image tree, one folder per class"}
    image = summary["image"]
    sampled = f"  (sampled {image['sampled_files']} files)" if image["sampled_files"] else ""
    click.echo(f"Data set  {summary['path']}")
    click.echo(f"Format    {kinds[summary['kind']]}; split: {summary['protocol']}")
    click.echo(f"Classes   {len(summary['classes'])}")
    click.echo(f"Images    {summary['total']:,}; size {_hist(image['sizes'])}; mode {_hist(image['modes'])}{sampled}")
    if summary["expected_md5"]:
        click.echo(f"md5       published {summary['expected_md5']} (check with `hemaedge data verify`)")
    click.echo("")
    click.echo(_table(["class"] + splits, rows))


@data.command()
@click.argument("path")
@CLASSES_OPTION
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="Decoding threads (default: 2 x cores, at most 8).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@user_errors
def verify(path, classes, workers, as_json):
    """Check a data set at PATH: md5 where known, every image decodable and not truncated,
    empty or missing classes and splits, label range, duplicate images.

    Exit code 0 when it is fine, 1 when problems were found (each listed), 2 when PATH is
    unusable. PATH is as for `hemaedge data info`.
    """
    from hemaedge.train.data import verify_dataset

    t0 = time.perf_counter()
    report = verify_dataset(path, classes=classes, workers=workers)
    seconds = time.perf_counter() - t0
    if as_json:
        click.echo(json.dumps({"path": str(report.path), "ok": report.ok, "checked": report.checked,
                               "md5": report.md5, "expected_md5": report.expected_md5,
                               "sizes": report.sizes, "modes": report.modes,
                               "problems": report.problems, "warnings": report.warnings,
                               "seconds": round(seconds, 2)}, indent=2))
    else:
        click.echo(f"Checked {report.checked:,} images in {report.path} ({seconds:.1f} s); "
                   f"size {_hist(report.sizes)}; mode {_hist(report.modes)}")
        if report.expected_md5:
            verdict = "matches" if report.md5 == report.expected_md5 else "DOES NOT match"
            click.echo(f"md5 {report.md5} {verdict} the published {report.expected_md5}")
        for w in report.warnings:
            click.echo(f"warning: {w}")
        if report.problems:
            click.echo(f"{len(report.problems)} problem(s):", err=True)
            for p in report.problems:
                click.echo(f"  - {p}", err=True)
        else:
            click.echo("OK: no problems found")
    if report.problems:
        raise click.exceptions.Exit(1)


@data.command()
@click.option("--data", "data_path", required=True, help="Source data set: " + PATH_HELP + ".")
@click.option("--out", type=click.Path(file_okay=False), default="calibration_data", show_default=True,
              help="Folder to write (replaced atomically with --force).")
@click.option("--sample-per-class", "per_class", type=click.IntRange(1, None), default=64, show_default=True,
              help="Images drawn at random (--seed) from every class (all of a class when it has fewer).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="train", show_default=True,
              help="Split to sample from; calibration should come from train.")
@click.option("--seed", type=int, default=42, show_default=True, help="Sampling seed.")
@CLASSES_OPTION
@click.option("--force", is_flag=True, help="Replace an existing calibration folder at --out.")
@user_errors
def calibration(data_path, out, per_class, split, seed, classes, force):
    """Write a deterministic stratified sample of a split (default: train) as calibration data.

    Copies the original image files byte for byte into OUT/<class>/, with OUT/manifest.csv
    (split, index, label, class, file, source, sha256) and OUT/README.md (how to regenerate).
    """
    from hemaedge.train.data import make_calibration_set
    from hemaedge.train.data import open_dataset

    ds = open_dataset(data_path, classes=classes)
    command = " ".join(["hemaedge data calibration", "--data", shlex.quote(data_path), "--out", shlex.quote(out),
                        "--sample-per-class", str(per_class), "--split", split, "--seed", str(seed), "--force"]
                       + (["--classes", shlex.quote(classes)] if classes else []))
    folder = make_calibration_set(ds, out, per_class=per_class, split=split, seed=seed, force=force,
                                  command=command)
    from hemaedge.train.data import read_manifest

    rows = read_manifest(folder)
    click.echo(f"Wrote {len(rows)} images from the {split} split of {ds.root} to {folder} "
               f"(manifest.csv, README.md)")


@data.command()
@click.argument("name")
@click.option("--size", type=click.Choice(["28", "64", "128", "224"]), default="28", show_default=True,
              help="MedMNIST image size (28 = the original MedMNIST v2 file).")
@click.option("--dest", type=click.Path(file_okay=False), default=None,
              help="Folder to download into (default: $HEMAEDGE_CACHE or the user cache dir).")
@user_errors
def fetch(name, size, dest):
    """Download a MedMNIST 2D .npz (e.g. bloodmnist) from Zenodo and check its md5.

    Needs internet; offline, copy the file by hand and point --data or $HEMAEDGE_DATA at it.
    """
    from hemaedge.train.data import download_medmnist

    path = download_medmnist(name, int(size), dest=dest)
    click.echo(f"{path} (md5 verified)")


@data.command("rbc-crops")
@click.argument("chula_dir", type=click.Path(file_okay=False, exists=True))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="ImageFolder tree to write.")
@click.option("--size", type=click.IntRange(16, 256), default=64, show_default=True, help="Crop side after resizing (px).")
@click.option("--side-factor", type=FiniteFloat(0.8, 4.0), default=1.5, show_default=True,
              help="Crop side in red-cell diameters (the device cuts its red-cell crops the same way).")
@click.option("--diameter", type=FiniteFloat(min=4), default=None,
              help="Red-cell diameter in px (default: measured, median over the data set's frames).")
@click.option("--seed", type=int, default=42, show_default=True, help="Seed of the frame-level split.")
@click.option("--exclude", multiple=True, help="Leave a type out, e.g. --exclude uncategorised (repeatable).")
@click.option("--force", is_flag=True, help="Replace an existing --out folder.")
@user_errors
def rbc_crops(chula_dir, out, size, side_factor, diameter, seed, exclude, force):
    """Point-labelled red-cell frames (Chula RBC-12 layout) -> single-cell crops.

    Writes OUT/{train,val,test}/{class}/*.png split by frame (70/10/20, seeded: no frame in two
    splits), classes.txt, manifest.csv and README.md; `hemaedge train finetune --data OUT`
    trains on it.

    \b
    Example:
      hemaedge data rbc-crops ../shared/data/chula_rbc12 --out data/rbc64 --exclude uncategorised
    """
    from tqdm import tqdm

    from hemaedge.train.rbc_crops import make_rbc_crops

    command = " ".join(["hemaedge data rbc-crops", shlex.quote(str(chula_dir)), "--out", shlex.quote(str(out)),
                        "--size", str(size), "--side-factor", str(side_factor), "--seed", str(seed)]
                       + (["--diameter", str(diameter)] if diameter else [])
                       + [f"--exclude {shlex.quote(e)}" for e in exclude])
    r = make_rbc_crops(chula_dir, out, size=size, side_factor=side_factor, diameter=diameter, seed=seed,
                       exclude=exclude, force=force, command=command,
                       progress=lambda it: tqdm(it, unit="frame", desc="frames"))
    click.echo(f"red-cell diameter {r['diameter_px']:.1f} px -> crop side {r['crop_side_px']} px -> {size}x{size}")
    for s, per in r["counts"].items():
        click.echo(f"{s}: {sum(per.values()):,} crops from {r['frames'][s]} frames")
    for line in r["skipped"]:
        click.echo(f"skipped {line}", err=True)
    click.echo(f"wrote {out} (classes.txt, manifest.csv, README.md)")
