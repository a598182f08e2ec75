"""Input validation against the API definitions.

botocore checks only required members, types and `min` client-side; the service enforced everything else
(max, pattern, enum), so the server checks the whole shape tree. Messages follow the AWS wording
("Value 'x' at 'a.b' failed to satisfy constraint: ...") and name the field path the way AWS did:
list items as `list.<n>.member`, map values as `map.<key>`.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

from openrobomaker.api.definitions import ApiDefinitions

_MAX_REPORTED = 10


class ValidationFailed(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems
        count = len(problems)
        shown = "; ".join(problems[:_MAX_REPORTED])
        noun = "error" if count == 1 else "errors"
        super().__init__(f"{count} validation {noun} detected: {shown}")


@functools.cache
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def _describe(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _join(path: str, member: str) -> str:
    return f"{path}.{member}" if path else member


class Validator:
    def __init__(self, definitions: ApiDefinitions):
        self.definitions = definitions
        self._checkers: dict[str, Callable[[dict, Any, str, list[str]], None]] = {
            "structure": self._check_structure,
            "list": self._check_list,
            "map": self._check_map,
            "string": self._check_string,
            "integer": self._check_integer,
            "long": self._check_integer,
            "float": self._check_float,
            "double": self._check_float,
            "boolean": self._check_boolean,
            "timestamp": self._check_timestamp,
            "blob": self._check_string,
        }

    def validate(self, shape_name: str | None, params: dict[str, Any]) -> None:
        if shape_name is None:
            return
        problems: list[str] = []
        self._check(shape_name, params, "", problems)
        if problems:
            raise ValidationFailed(problems)

    def _check(self, shape_name: str, value: Any, path: str, problems: list[str]) -> None:
        shape = self.definitions.shape(shape_name)
        self._checkers[shape["type"]](shape, value, path, problems)

    def _type_error(self, value: Any, path: str, expected: str, problems: list[str]) -> None:
        problems.append(
            f"Value {_describe(value)} at '{path}' failed to satisfy constraint: Member must be {expected}"
        )

    def _check_structure(self, shape: dict, value: Any, path: str, problems: list[str]) -> None:
        if not isinstance(value, dict):
            self._type_error(value, path or "body", "a structure", problems)
            return
        members = shape.get("members", {})
        for required in shape.get("required", []):
            if value.get(required) is None:
                problems.append(
                    f"Value null at '{_join(path, required)}' failed to satisfy constraint: Member must not be null"
                )
        for name, member_value in value.items():
            member = members.get(name)
            # Unknown members are ignored, as the service did, so newer clients keep working.
            if member is None or member_value is None:
                continue
            self._check(member["shape"], member_value, _join(path, name), problems)

    def _check_length(
        self, shape: dict, size: int, value: Any, path: str, what: str, problems: list[str]
    ) -> None:
        low, high = shape.get("min"), shape.get("max")
        if low is not None and size < low:
            problems.append(
                f"Value {_describe(value)} at '{path}' failed to satisfy constraint: Member must have {what} greater than or equal to {low}"
            )
        if high is not None and size > high:
            problems.append(
                f"Value {_describe(value)} at '{path}' failed to satisfy constraint: Member must have {what} less than or equal to {high}"
            )

    def _check_list(self, shape: dict, value: Any, path: str, problems: list[str]) -> None:
        if not isinstance(value, list):
            self._type_error(value, path, "a list", problems)
            return
        self._check_length(shape, len(value), value, path, "length", problems)
        for index, item in enumerate(value, start=1):
            item_path = f"{path}.{index}.member"
            if item is None:
                problems.append(
                    f"Value null at '{item_path}' failed to satisfy constraint: Member must not be null"
                )
                continue
            self._check(shape["member"]["shape"], item, item_path, problems)

    def _check_map(self, shape: dict, value: Any, path: str, problems: list[str]) -> None:
        if not isinstance(value, dict):
            self._type_error(value, path, "a map", problems)
            return
        self._check_length(shape, len(value), value, path, "length", problems)
        for key, item in value.items():
            self._check(shape["key"]["shape"], key, f"{path}.key", problems)
            if item is None:
                problems.append(
                    f"Value null at '{path}.{key}' failed to satisfy constraint: Member must not be null"
                )
                continue
            self._check(shape["value"]["shape"], item, f"{path}.{key}", problems)

    def _check_string(self, shape: dict, value: Any, path: str, problems: list[str]) -> None:
        if not isinstance(value, str):
            self._type_error(value, path, "a string", problems)
            return
        self._check_length(shape, len(value), value, path, "length", problems)
        enum = shape.get("enum")
        if enum is not None and value not in enum:
            problems.append(
                f"Value {_describe(value)} at '{path}' failed to satisfy constraint: Member must satisfy enum value set: [{', '.join(enum)}]"
            )
        pattern = shape.get("pattern")
        if pattern is not None and _compiled(pattern).fullmatch(value) is None:
            problems.append(
                f"Value {_describe(value)} at '{path}' failed to satisfy constraint: Member must satisfy regular expression pattern: {pattern}"
            )

    def _check_range(self, shape: dict, value: float, path: str, problems: list[str]) -> None:
        low, high = shape.get("min"), shape.get("max")
        if low is not None and value < low:
            problems.append(
                f"Value {value} at '{path}' failed to satisfy constraint: Member must have value greater than or equal to {low}"
            )
        if high is not None and value > high:
            problems.append(
                f"Value {value} at '{path}' failed to satisfy constraint: Member must have value less than or equal to {high}"
            )

    def _check_integer(self, shape: dict, value: Any, path: str, problems: list[str]) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            self._type_error(value, path, "an integer", problems)
            return
        limit = 2**31 if shape["type"] == "integer" else 2**63
        if not -limit <= value < limit:
            self._type_error(value, path, f"a {shape['type']} in range", problems)
            return
        self._check_range(shape, value, path, problems)

    def _check_float(self, shape: dict, value: Any, path: str, problems: list[str]) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self._type_error(value, path, "a number", problems)
            return
        self._check_range(shape, value, path, problems)

    def _check_boolean(self, shape: dict, value: Any, path: str, problems: list[str]) -> None:
        if not isinstance(value, bool):
            self._type_error(value, path, "a boolean", problems)

    def _check_timestamp(self, shape: dict, value: Any, path: str, problems: list[str]) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float | str | datetime):
            self._type_error(value, path, "a timestamp", problems)
