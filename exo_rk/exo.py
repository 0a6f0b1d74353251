"""``python -m exo_rk.exo [exo's arguments]``: run legacy exo with the ``rkllm`` engine registered.

Same effect as the ``.pth`` hook, for installs where it is not active (``EXO_RK_NO_HOOK``, a copied
package, an interpreter started with ``-S``). Defaults to ``--inference-engine rkllm`` when none is given.
"""

from __future__ import annotations

import runpy
import sys
from typing import List, Optional

from exo_rk.registration import install_import_hook


def exo_argv(argv: List[str]) -> List[str]:
    if not any(a == "--inference-engine" or a.startswith("--inference-engine=") for a in argv):
        argv = [*argv, "--inference-engine", "rkllm"]
    return argv


def main(argv: Optional[List[str]] = None) -> None:
    import os

    os.environ.pop("EXO_RK_NO_HOOK", None)
    install_import_hook()
    sys.argv = ["exo", *exo_argv(list(sys.argv[1:] if argv is None else argv))]
    runpy.run_module("exo.main", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
