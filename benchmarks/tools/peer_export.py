"""Build the Ultralytics peers from their model yaml (random weights) and export them to ONNX fp32.

    PEER_ENV/bin/python benchmarks/tools/peer_export.py --out DIR

Runs in a separate environment that has the `peer` extra (`pip install -e '.[peer]'` in its own
virtualenv: Ultralytics and CPU PyTorch, ~1.6 GB), never on a device and never in the default
install. It imports nothing of hemaedge, so that environment needs only the extra. `peer_speed`
times the files it writes with ONNX Runtime beside our own pipeline.

Writes DIR/yolo11n-cls-<size>.onnx (the classifier a user would pick instead of ours: YOLO11n-cls
at 128 px, `--classes` outputs), DIR/yolo11n-det-<size>.onnx (a YOLO11n detector at 640 px with
`--detector-classes` outputs: WBC, RBC, platelet as in BCCD) and DIR/peers.json (versions,
settings, file sizes). Random weights: a trained model runs exactly the same operations, so
latency does not depend on them.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path


def export(kind: str, cfg: str, size: int, classes: int, out: Path) -> dict:
    import torch
    import yaml
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    # the architecture from its yaml with `classes` outputs (the packaged yaml says 1000 / 80);
    # the file keeps its name, from which ultralytics reads the model scale ("n")
    spec = yaml_model_load(cfg)
    spec.update(nc=classes, scale="n")
    spec.pop("yaml_file", None)
    local = out / f"cfg-{kind}" / cfg
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(yaml.safe_dump(spec, sort_keys=False))
    torch.manual_seed(0)
    yolo = YOLO(str(local), task=kind)  # no weights are downloaded
    t0 = time.perf_counter()
    path = Path(yolo.export(format="onnx", imgsz=size, batch=1, dynamic=False, simplify=False, device="cpu"))
    name = f"yolo11n-{'cls' if kind == 'classify' else 'det'}-{size}.onnx"
    shutil.move(str(path), out / name)
    shutil.rmtree(local.parent)
    return {"file": name, "task": kind, "config": cfg, "input": [1, 3, size, size], "classes": classes,
            "parameters": int(sum(p.numel() for p in yolo.model.parameters())), "bytes": (out / name).stat().st_size,
            "export_s": round(time.perf_counter() - t0, 1), "weights": "random (torch.manual_seed(0))"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cls-size", type=int, default=128)
    ap.add_argument("--det-size", type=int, default=640)
    ap.add_argument("--classes", type=int, default=8, help="classifier outputs (our default model has 8)")
    ap.add_argument("--detector-classes", type=int, default=3, help="detector classes (BCCD: WBC, RBC, platelet)")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no update checks or downloads
    cwd = Path.cwd()
    os.chdir(a.out)  # ultralytics writes its export next to the current folder
    try:
        import onnx
        import torch
        import ultralytics

        models = [export("classify", "yolo11n-cls.yaml", a.cls_size, a.classes, a.out),
                  export("detect", "yolo11n.yaml", a.det_size, a.detector_classes, a.out)]
        info = {"ultralytics": ultralytics.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
                "models": models}
    finally:
        os.chdir(cwd)
    (a.out / "peers.json").write_text(json.dumps(info, indent=2))
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
