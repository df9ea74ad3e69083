"""The CERT toolkit on the sidecar's own scoring: measure, batch evaluation, calibration,
validation and EU AI Act reports. Submodules are imported on use (numpy/onnx/matplotlib are heavy).

- :mod:`sidecar.toolkit.measure`   ``measure(text1, text2, threshold)``
- :mod:`sidecar.toolkit.evaluate`  ``evaluate_traces(trace_file, threshold, output)``
- :mod:`sidecar.toolkit.calibrate` ROC / AUC / threshold choice with a held-out check
- :mod:`sidecar.toolkit.validate`  the CERT methodology on SQuAD v2 and HaluEval
- :mod:`sidecar.toolkit.report`    Annex IV / Article 15 / Article 19 documentation
- :mod:`sidecar.toolkit.cli`       the ``certus-sidecar evaluate|calibrate|validate|report`` commands
"""

from __future__ import annotations
