"""``rkllama-bridge``: serve models, or check the board (``doctor``)."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from rk_common.settings import SettingsError, cli_error

from .config import PROGRAM


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="rkllama-bridge", description="rkllama-compatible server for Rockchip "
                                     "NPU boards (RKLLM), with host-CPU and simulated runtimes")
    sub = parser.add_subparsers(dest="command", required=True)
    PROGRAM.add_arguments(sub.add_parser("serve", help="serve the models of a directory"))
    sub.add_parser("doctor", help="report board, NPU driver, librkllmrt version and model compatibility",
                   add_help=False)
    if argv[:1] == ["doctor"]:
        from .doctor import main as doctor_main

        return doctor_main(argv[1:])
    args = parser.parse_args(argv)
    try:
        config = PROGRAM.load(args)
    except SettingsError as exc:
        return cli_error("rkllama-bridge", exc)
    logging.basicConfig(level=getattr(logging, str(config.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .server import main_serve

    return main_serve(config)


if __name__ == "__main__":
    sys.exit(main())
