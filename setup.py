"""Build hook: compile protos/ into service/_proto/ (see service/protogen.py); metadata is in pyproject.toml."""

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _protogen():
    spec = importlib.util.spec_from_file_location("_speechlora_protogen", ROOT / "service" / "protogen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithProtos(build_py):
    """build_py that also writes the generated gRPC modules (into the source tree when editable)."""

    def run(self):
        super().run()
        out = ROOT / "service" / "_proto" if self.editable_mode else Path(self.build_lib) / "service" / "_proto"
        _protogen().compile_protos(ROOT / "protos", out)


setup(cmdclass={"build_py": BuildPyWithProtos})
