"""Source a bundle's setup scripts before running a program, without user strings in shell code.

RoboMaker ran `BUNDLE_CURRENT_PREFIX=<dir> . <dir>/setup.sh; ... roslaunch ...` as one shell string. Here the
shell script is a constant; bundle directories, setup scripts and the program's argv reach it only as
positional arguments, and the program is `exec`ed directly so signals reach it, not a shell.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from openrobomaker.bundles.formats import ExtractedBundle

BASH = "/bin/bash"
ARGV0 = "openrobomaker-source"

# Arguments: <prefix> <setup script> ... -- <argv...>. The pairs are copied into arrays and the
# positional parameters cleared first, so a setup script that runs `set --` (catkin's do) cannot
# clobber them. Sourcing errors are ignored as RoboMaker's `;`-separated prefix did, and any
# `set -e` / `set -u` a setup script leaves behind is undone before the next one.
SOURCE_SCRIPT = r"""
_orm_prefixes=()
_orm_scripts=()
while [ "$#" -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; break; fi
  _orm_prefixes+=("$1")
  _orm_scripts+=("$2")
  shift 2
done
_orm_argv=("$@")
set --
for _orm_i in "${!_orm_prefixes[@]}"; do
  BUNDLE_CURRENT_PREFIX="${_orm_prefixes[$_orm_i]}"
  . "${_orm_scripts[$_orm_i]}"
  set +e +u
done
unset BUNDLE_CURRENT_PREFIX _orm_prefixes _orm_scripts _orm_i
if [ "${#_orm_argv[@]}" -eq 0 ]; then exit 0; fi
exec "${_orm_argv[@]}"
"""


def _as_bundles(bundles: ExtractedBundle | Iterable[ExtractedBundle]) -> list[ExtractedBundle]:
    if isinstance(bundles, ExtractedBundle):
        return [bundles]
    return list(bundles)


def source_command_prefix(bundles: ExtractedBundle | Iterable[ExtractedBundle]) -> list[str]:
    """argv to put before a program so it runs with every setup script of the bundle(s) sourced, in order."""
    argv = [BASH, "-c", SOURCE_SCRIPT, ARGV0]
    for bundle in _as_bundles(bundles):
        for overlay in bundle.overlays:
            if overlay.setup_script is not None:
                argv += [str(overlay.prefix), str(overlay.setup_script)]
    argv.append("--")
    return argv


def sourced_argv(bundles: ExtractedBundle | Iterable[ExtractedBundle], argv: Sequence[str]) -> list[str]:
    """The full argv that sources the bundle(s) and then `exec`s `argv`."""
    return source_command_prefix(bundles) + list(argv)
