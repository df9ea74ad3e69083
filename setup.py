"""Build hook: generate the protobuf/gRPC Python code from proto/ with grpcio-tools."""
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _generate() -> None:
    from sidecar.protogen import generate

    generate()


# before setup() discovers packages, so the generated ones are found and shipped
_generate()


class BuildWithProtos(build_py):
    def run(self) -> None:
        _generate()
        super().run()


setup(cmdclass={"build_py": BuildWithProtos})
