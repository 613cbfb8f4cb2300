"""Evaluation: reports, calibration, test-time augmentation, error analysis and saliency.

    evaluate.evaluate_workdir(workdir, "test", tta="flip", fit_temperature=True)
    explain.explain_files(workdir, ["cat.png"], method="gradcam", out="maps")

evaluate.py (a model directory on a split: report.json, plots, report.html),
report.py (per-class metrics, confusion matrix), calibration.py (ECE, temperature
scaling, reliability diagram), tta.py (flip / crop views), interpret.py (top
losses, most confused, the gallery), saliency.py + explain.py (Grad-CAM,
Grad-CAM++, attention rollout, integrated gradients), html_report.py,
inference.py, predict.py, ensemble.py.
"""
