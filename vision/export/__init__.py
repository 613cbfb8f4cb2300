"""Export: SavedModel, TFLite, ONNX and StableHLO, each checked against the JAX model.

    from vision.export import export_workdir, load_exported
    report = export_workdir("runs/fashion_mnist", "tflite", "exports/fmnist_tflite", int8=True)
    model = load_exported("exports/fmnist_tflite")
    model.predict(uint8_images)["logits"]

An export directory holds the model file, `export.json` (format, input spec,
class names, version) and `export_report.json` (the parity check). The model
takes uint8 NHWC images of any batch size and returns `logits` and `embedding`.
"""

from vision.export.export import ParityError, export_workdir
from vision.export.runtime import EXPORT_JSON, FORMATS, ExportedModel, load_exported

__all__ = ["EXPORT_JSON", "FORMATS", "ExportedModel", "ParityError", "export_workdir",
           "load_exported"]
