"""hemaedge.export: Keras models -> TFLite / ONNX / TensorRT artifacts in verified bundles.

Modules, one job each:
  source.py         the Keras model + its sidecar JSON (classes, input contract)
  calibration.py    calibration images -> prepare_batch tensors
  evaldata.py       val/test images for parity
  tflite.py         TFLite fp32 / fp16 / dynamic / full-integer int8 (+ selective float fallback)
  onnx_export.py    tf2onnx and ONNX Runtime QDQ int8
  onnx_head.py      scikit-learn heads via skl2onnx, backbone + head merged into one graph
  tensorrt.py       TensorRT engines and the int8 calibrator (on the device)
  parity.py         the artifact run through the device's own code (staged bundle, edge.backends),
                    agreement / accuracy / macro-F1 deltas and the failed-validation verdict
  bundle_writer.py  artifact -> verified bundle (hemaedge.edge.bundle.write_bundle)
  pipeline.py       convert -> parity -> bundle, for one format or all of them
  report.py         the export table (Markdown + JSON)
  wrap.py, trt_bundle.py   `export bundle` and `export tensorrt`
  cli.py            the `hemaedge export` click group (argument parsing only)
"""
