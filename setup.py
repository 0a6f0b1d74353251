"""Build step setuptools cannot express in setup.cfg: install ``exo_rk_hook.pth`` at the top of
site-packages (package data lands inside the package, where the interpreter never reads .pth files).

Works for a wheel (``pip install .``: the file is copied to the root of ``build_lib``) and for an editable
install (``pip install -e .``: the file is written to the root of the editable wheel).
"""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "exo_rk_hook.pth"
PTH_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "exo_rk", PTH)


class build_py_with_pth(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            # setuptools' editable_wheel: install_lib is the root of the wheel being assembled.
            root = self.get_finalized_command("install").install_lib
        else:
            root = self.build_lib
        self.copy_file(PTH_SOURCE, os.path.join(root, PTH), preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH)]


setup(cmdclass={"build_py": build_py_with_pth})
