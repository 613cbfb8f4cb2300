"""Export: SavedModel, TFLite, ONNX and StableHLO, each checked against the JAX model.

    from vision.export import export_workdir, load_exported
    report = export_workdir("runs/fashion_mnist", "tflite", "exports/fmnist_tflite", int8=True)
    model = load_exported("exports/fmnist_tflite")
    model.predict(uint8_images)["logits"]

An export directory holds the model file, `export.json` (format, input spec,
class names, version) and `export_report.json` (the parity check, on a bounded
sample of the validation split). A converter failure is an `ExportError`
whose message is one line: format, op or reason, what to do. The model
takes uint8 NHWC images (any batch size; int8 graphs batch 1, which `predict`
feeds one image at a time) and returns `logits` and `embedding`.
"""

from vision.export.errors import ExportError
from vision.export.export import DEFAULT_MAX_EXAMPLES, ParityError, export_workdir
from vision.export.runtime import EXPORT_JSON, FORMATS, ExportedModel, load_exported

__all__ = ["DEFAULT_MAX_EXAMPLES", "EXPORT_JSON", "FORMATS", "ExportError", "ExportedModel",
           "ParityError", "export_workdir", "load_exported"]
