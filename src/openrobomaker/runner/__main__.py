"""`python -m openrobomaker.runner --spec SPEC.json`: run one simulation job run."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path

from openrobomaker.runner.isolation import PreparedIsolation
from openrobomaker.runner.spec import RunnerSpec, SpecError
from openrobomaker.runner.turns import NO_TURNS, TurnTaker


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
    # A reused runner process shows which of its runs this is (the executor's handles check it); when
    # started from the command line it means nothing.
    parser.add_argument("--run", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return run_spec(args.spec)


def run_spec(spec_path: Path, prepared_isolation: PreparedIsolation | None = None) -> int:
    """The run itself; the zygote calls this directly (an argparse parser costs ~5 ms of CPU per runner)."""
    return execute_spec(spec_path, prepared_isolation)[0]


def execute_spec(
    spec_path: Path, prepared_isolation: PreparedIsolation | None = None, turns: TurnTaker = NO_TURNS
) -> tuple[int, bool]:
    """Run the spec's job: the exit code, and whether the control plane took the final report (only then
    may a reused runner go on to another job: otherwise its final report is still due, from final.json)."""
    try:
        spec = RunnerSpec.from_json(spec_path.read_text())
    except (OSError, SpecError) as exc:
        print(f"openrobomaker runner: cannot read spec {spec_path}: {exc}", file=sys.stderr)
        if prepared_isolation is not None:
            prepared_isolation.discard()
        return 2, False
    work_dir = Path(spec.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    _configure_logging(work_dir / "runner.log")

    from openrobomaker.runner.job import JobRun

    run = JobRun(spec, prepared_isolation, turns)
    code = run.run()
    return code, run.final_acknowledged


if __name__ == "__main__":
    sys.exit(main())
