"""`python -m openrobomaker.agent --endpoint URL --credentials robot.json --work-dir DIR`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from openrobomaker.agent.agent import run_agent


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", help="server URL (default: the one in the credentials file)")
    parser.add_argument("--credentials", type=Path, required=True, help="robot.json from robot-credentials")
    parser.add_argument("--work-dir", type=Path, required=True, help="the only directory the agent writes to")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="openrobomaker agent", description=__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.FileHandler(args.work_dir / "agent.log"), logging.StreamHandler()],
    )
    return run_agent(args.endpoint, args.credentials, args.work_dir)


if __name__ == "__main__":
    sys.exit(main())
