"""Build hook: generate the protobuf/gRPC Python code from proto/ with grpcio-tools."""
import os
import sys

from setuptools import setup
from setuptools.command.build_py import build_py


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


class BuildWithProtos(build_py):
    def run(self) -> None:
        from sidecar.protogen import generate

        generate()
        super().run()


setup(cmdclass={"build_py": BuildWithProtos})
