"""`python -m devstack run` (what `make run` calls) and `python -m devstack stop`."""
from __future__ import annotations

import argparse
import logging
import sys

from devstack import run as dev_run
from devstack.binaries import MissingBinary
from devstack.backing import ServiceError, stop_services


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run the chosen command; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("run", help="start the development stack (Ctrl-C stops it)")
    commands.add_parser("stop", help="stop backing services left running under var/")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="devstack: %(message)s")
    try:
        if args.command == "run":
            return dev_run.run()
        stop_services(dev_run.REPO_ROOT / "var")
        return 0
    except (dev_run.RunError, ServiceError, MissingBinary) as exc:
        print(f"devstack: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
