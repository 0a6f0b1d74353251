"""``rkllama-bridge``: serve models, check the board (``doctor``), pin its clocks (``tune``), measure (``bench``)."""

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
    sub.add_parser("doctor", help="report board, NPU driver, librkllmrt version, clocks and model compatibility",
                   add_help=False)
    sub.add_parser("tune", help="pin CPU, NPU and DDR clocks at their highest frequency (root; revertible)",
                   add_help=False)
    sub.add_parser("bench", help="measure TTFT, prefill and decode speed of a model, as markdown",
                   add_help=False)
    if argv[:1] in (["doctor"], ["tune"], ["bench"]):
        import importlib

        return importlib.import_module(f".{argv[0]}", __package__).main(argv[1:])
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
