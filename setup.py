"""Package layout: the design card's folders are the ``certus.*`` import packages.

``sidecar/`` -> ``certus.sidecar``, ``kernels/`` -> ``certus.kernels``, ``models/`` ->
``certus.models`` (``certus`` is a PEP 420 namespace shared with the ``certus-client``
distribution, which ships ``certus.client`` and the generated ``certus.evaluate.v1``). No bare
``sidecar``, ``kernels`` or ``models`` is ever importable from site-packages, so no other
distribution can shadow them (README, "Layout and import names").
"""

from setuptools import find_packages, setup

FOLDERS = {"certus.sidecar": "sidecar", "certus.kernels": "kernels", "certus.models": "models"}

packages = []
for name, folder in FOLDERS.items():
    packages += [name, *(f"{name}.{sub}" for sub in find_packages(folder))]

setup(packages=packages, package_dir=FOLDERS)
