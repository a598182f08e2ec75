#!/usr/bin/env python3
"""Generate OpenRoboMaker's API definitions from botocore's final `robomaker` model.

The output, `src/openrobomaker/api/definitions/robomaker-2018-06-29.json`, is the project's single source
of truth for operations, shapes and constraints: the server validates requests with it and
`openrobomaker model export` writes a botocore model back out of it. Run this only when the model changes:

    pip install botocore==1.40.59 && python scripts/gen_api_definitions.py

The botocore release is pinned because 1.40.59 is the last one that ships `robomaker`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import botocore
import botocore.session

EXPECTED_BOTOCORE = "1.40.59"
OUT = Path(__file__).resolve().parent.parent / "src/openrobomaker/api/definitions/robomaker-2018-06-29.json"


def load(loader, type_name: str) -> dict:
    return loader.load_service_model("robomaker", type_name, api_version="2018-06-29")


def main() -> int:
    if botocore.__version__ != EXPECTED_BOTOCORE:
        print(f"need botocore=={EXPECTED_BOTOCORE}, found {botocore.__version__}", file=sys.stderr)
        return 1
    loader = botocore.session.get_session().get_component("data_loader")
    service = load(loader, "service-2")
    definitions = {
        "source": f"botocore {botocore.__version__} robomaker 2018-06-29",
        "metadata": service["metadata"],
        "version": service.get("version", "2.0"),
        "documentation": service.get("documentation", ""),
        "operations": service["operations"],
        "shapes": service["shapes"],
        "paginators": load(loader, "paginators-1")["pagination"],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(definitions, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT} ({len(definitions['operations'])} operations, {len(definitions['shapes'])} shapes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
