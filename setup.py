"""Wheels carry the exec shim (jobnest/libjobnest_exec.so) and the local executor's sandbox
helper (jobnest_controller/jobnest-sandbox) when built where a C compiler exists; `make shim` and
`make sandbox` build them for a checkout. Everything else is in pyproject.toml."""

import os
import shutil
import subprocess

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.dist import Distribution


class BuildPyWithShim(build_py):
    def run(self) -> None:
        super().run()
        if shutil.which(os.environ.get("CC", "cc")) and os.path.exists("scripts/build-shim.sh"):
            subprocess.run(["bash", "scripts/build-shim.sh",
                            os.path.abspath(os.path.join(self.build_lib, "jobnest", "libjobnest_exec.so"))], check=True)
            subprocess.run(["bash", "scripts/build-sandbox.sh",
                            os.path.abspath(os.path.join(self.build_lib, "jobnest_controller", "jobnest-sandbox"))],
                           check=True)
        else:
            self.announce("no C compiler: the exec shim and the sandbox helper are left out", level=2)


class NativeDistribution(Distribution):
    """A wheel that may hold a native library is tagged for this platform."""

    def has_ext_modules(self) -> bool:
        return True


setup(cmdclass={"build_py": BuildPyWithShim}, distclass=NativeDistribution)
