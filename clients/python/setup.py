"""Build hook: generate ``certus.evaluate.v1`` from the repository's proto/ with grpcio-tools."""

import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src", "certus", "client"))


def _generate() -> None:
    import protogen  # this package's generator, loaded without importing the package

    if protogen.PROTO_DIR is not None:
        protogen.generate()


# before setup() discovers packages, so the generated ones are found and shipped
_generate()


class BuildWithProtos(build_py):
    def run(self) -> None:
        _generate()
        super().run()


setup(cmdclass={"build_py": BuildWithProtos})
