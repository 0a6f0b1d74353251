"""``rkllama-bridge tune --performance``: pin the CPU, NPU and DDR clocks at their highest frequencies.

Every write is listed (path, old → new). Before the first one, the previous values go to a revert file
(JSON); ``--revert FILE`` puts them back. Writing the real /sys needs root; ``--dry-run`` only lists the
writes, and ``--sysfs-root DIR`` works on a copy or fake tree of /sys (with the caller's own permissions).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import List, Optional

from . import freq

REVERT_FORMAT = "rkllama-bridge tune revert 1"
DEFAULT_REVERT_DIR = "/var/lib/rkllama-bridge"


class TuneError(Exception):
    """A write failed or a revert file is unusable; the message says which and what to do."""


def _file(root: Path, path: str) -> Path:
    return Path(root) / path.lstrip("/")


def _write(root: Path, path: str, value: str) -> None:
    with open(_file(root, path), "w") as f:  # one write(2), like `echo value > path`
        f.write(f"{value}\n")


def _needs_root(root: Path, dry_run: bool) -> Optional[str]:
    if dry_run or Path(root).resolve() != Path("/") or os.geteuid() == 0:
        return None
    return ("rkllama-bridge tune: writing /sys needs root: run it with sudo (`--dry-run` lists the writes "
            "without making them)")


def save_revert(path: Path, root: Path, writes: List[freq.Write]) -> None:
    """Write the revert file (atomically: a crash leaves the old file or the whole new one)."""
    doc = {"format": REVERT_FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sysfs_root": str(root),
           "restore": [{"path": w.path, "value": w.old} for w in writes if w.old is not None]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    tmp.replace(path)


def load_revert(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise TuneError(f"cannot read revert file {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != REVERT_FORMAT:
        raise TuneError(f"{path} is not a revert file of rkllama-bridge tune (format {REVERT_FORMAT!r})")
    entries = doc.get("restore")
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("path"), str) and isinstance(e.get("value"), str)
            and e["path"].startswith("/sys/") for e in entries):
        raise TuneError(f"{path}: 'restore' must be a list of {{\"path\": \"/sys/...\", \"value\": \"...\"}}")
    return doc


def apply(root: Path, writes: List[freq.Write], out) -> None:
    for done, w in enumerate(writes):
        try:
            _write(root, w.path, w.new)
        except OSError as exc:
            raise TuneError(f"cannot write {w.path}: {exc.strerror or exc}; {done} of {len(writes)} writes "
                            "made") from None
        print(f"  wrote {w.path}: {w.old if w.old is not None else '-'} → {w.new}", file=out)


def performance(root: Path, dry_run: bool, revert_file: Optional[Path], out) -> int:
    clocks = freq.read_clocks(root)
    if Path(root).resolve() != Path("/"):
        print(f"sysfs root: {root}", file=out)
    if not clocks.all:
        print(f"rkllama-bridge tune: no cpufreq or devfreq under {Path(root) / 'sys'}: nothing to tune", file=out)
        return 1
    writes, notes = freq.plan_performance(clocks)
    for note in notes:
        print(f"  {note}", file=out)
    if not writes:
        print("nothing to write: every clock found is pinned at its highest frequency", file=out)
        return 0
    if dry_run:
        print(f"would write {len(writes)} file(s) (dry run, nothing written):", file=out)
        for w in writes:
            print(f"  {w.path}: {w.old if w.old is not None else '-'} → {w.new}  ({w.why})", file=out)
        return 0
    if revert_file is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        revert_file = _file(root, DEFAULT_REVERT_DIR) / f"tune-revert-{stamp}.json"
    save_revert(revert_file, root, writes)
    print(f"previous values saved to {revert_file} (undo: rkllama-bridge tune --revert {revert_file})", file=out)
    print(f"writing {len(writes)} file(s):", file=out)
    try:
        apply(root, writes, out)
    except TuneError as exc:
        raise TuneError(f"{exc}; undo them with: rkllama-bridge tune --revert {revert_file}") from None
    print("done: CPU, NPU and DDR clocks pinned at their highest frequencies (until reboot)", file=out)
    return 0


def revert(path: Path, root: Optional[Path], dry_run: bool, out) -> int:
    doc = load_revert(path)
    root = Path(root if root is not None else doc.get("sysfs_root") or "/")
    message = _needs_root(root, dry_run)
    if message:
        raise TuneError(message)
    failed = 0
    # Reverse order: governors go back before the caps they ran under.
    for entry in reversed(doc["restore"]):
        current = (freq.read_sysfs(root, entry["path"]) or "").strip()
        if current == entry["value"]:
            print(f"  {entry['path']}: already {current}", file=out)
            continue
        if dry_run:
            print(f"  would write {entry['path']}: {current or '?'} → {entry['value']}", file=out)
            continue
        try:
            _write(root, entry["path"], entry["value"])
        except OSError as exc:
            failed += 1
            print(f"  error: cannot write {entry['path']}: {exc.strerror or exc}", file=out)
            continue
        print(f"  wrote {entry['path']}: {current or '?'} → {entry['value']}", file=out)
    if failed:
        raise TuneError(f"{failed} value(s) of {path} could not be restored")
    print(f"restored the values of {path}" if not dry_run else "dry run, nothing written", file=out)
    return 0


def main(argv: Sequence[str] | None = None, out=None) -> int:
    import sys

    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="rkllama-bridge tune", description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--performance", action="store_true", help="pin CPU, NPU and DDR at their highest frequency")
    what.add_argument("--revert", type=Path, metavar="FILE", help="restore the values a revert file holds")
    parser.add_argument("--dry-run", action="store_true", help="list the writes, make none (no root needed)")
    parser.add_argument("--revert-file", type=Path, default=None, metavar="FILE",
                        help=f"where --performance saves the previous values (default: {DEFAULT_REVERT_DIR}/"
                             "tune-revert-<time>.json under the sysfs root)")
    parser.add_argument("--sysfs-root", type=Path, default=None, metavar="DIR",
                        help="work on /sys under DIR (a copy or a fake tree; root is then not required)")
    args = parser.parse_args(argv)
    try:
        if args.revert is not None:
            return revert(args.revert, args.sysfs_root, args.dry_run, out)
        root = args.sysfs_root or Path("/")
        message = _needs_root(root, args.dry_run)
        if message:
            raise TuneError(message)
        return performance(root, args.dry_run, args.revert_file, out)
    except TuneError as exc:
        out.flush()
        text = str(exc)
        print(text if text.startswith("rkllama-bridge") else f"rkllama-bridge tune: error: {text}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
