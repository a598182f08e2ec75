"""`python -m openrobomaker.runner --spec SPEC.json`: run one simulation job run."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from openrobomaker.runner.spec import RunnerSpec, SpecError


def _configure_logging(log_file: Path) -> None:
    # runner.log only: the runner's stderr goes to runner.out beside it (interpreter crashes), and logging
    # to both wrote every line twice. stderr is the fallback when runner.log cannot be opened.
    handlers: list[logging.Handler] = []
    with contextlib.suppress(OSError):
        handlers.append(logging.FileHandler(log_file))
    if not handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openrobomaker.runner", description=__doc__)
    parser.add_argument("--spec", required=True, type=Path, help="path of the run's spec JSON")
    args = parser.parse_args(argv)
    return run_spec(args.spec)


def run_spec(spec_path: Path) -> int:
    """The run itself; the zygote calls this directly (an argparse parser costs ~5 ms of CPU per runner)."""
    try:
        spec = RunnerSpec.from_json(spec_path.read_text())
    except (OSError, SpecError) as exc:
        print(f"openrobomaker runner: cannot read spec {spec_path}: {exc}", file=sys.stderr)
        return 2
    work_dir = Path(spec.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    _configure_logging(work_dir / "runner.log")

    from openrobomaker.runner.job import JobRun

    return JobRun(spec).run()


if __name__ == "__main__":
    sys.exit(main())
