"""``cdc.config.options``: a component's YAML options checked against its constructor,
and ``cdc schema``'s JSON Schema built from the same signatures."""

from __future__ import annotations

import enum
import json
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import jsonschema
import pytest
import yaml

from cdc.config.jsonschema import config_schema
from cdc.config.options import check_value, validate_options
from cdc.errors import ConfigProblem

from _ops_helpers import ROOT

if TYPE_CHECKING:
    from decimal import Decimal  # a name only type checkers see

pytestmark = pytest.mark.unit


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Plugin:
    def __init__(self, limit: Decimal, name: str = "x", colour: Color = Color.RED,
                 where: Path | None = None, pair: tuple[int, str] | None = None,
                 ratio: float = 1.0, retries: int = 3, context=None) -> None:
        pass


def check(annotation, value):
    problems: list[ConfigProblem] = []
    return check_value(annotation, value, "k", problems), [str(p) for p in problems]


def test_an_annotation_imported_only_for_type_checkers_accepts_any_value():
    problems: list[ConfigProblem] = []
    out = validate_options(Plugin, {"limit": "12.5"}, "sinks[0]", problems)
    assert problems == [] and out == {"limit": "12.5"}


def test_path_and_enum_options_take_strings():
    assert check(Path, "out/x.jsonl") == (Path("out/x.jsonl"), [])
    assert check(Path | None, None) == (None, [])
    assert check(Color, "blue") == (Color.BLUE, [])
    assert check(Color, "BLUE") == (Color.BLUE, [])
    value, problems = check(Color, "green")
    assert problems == ["k: must be one of red, blue (got 'green')"]


def test_a_fixed_tuple_checks_each_position():
    assert check(tuple[int, str], [1, "a"]) == ((1, "a"), [])
    assert check(tuple[int, str], ["2", "b"]) == ((2, "b"), [])
    _, problems = check(tuple[int, str], [1, 2, 3])
    assert problems == ["k: expected a list of 2 items, got a list"]
    _, problems = check(tuple[int, str], ["x", "a"])
    assert problems == ["k[0]: expected an integer, got str 'x'"]
    assert check(tuple[int, ...], [1, "2", 3]) == ((1, 2, 3), [])


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", float("nan"), float("inf")])
def test_a_float_must_be_finite(value):
    _, problems = check(float, value)
    assert problems == [f"k: expected a finite number, got {type(value).__name__} {value!r}"]


def test_scalars_from_environment_strings():
    assert check(int, "1_000") == (1000, [])
    assert check(float, "0.5") == (0.5, [])
    assert check(bool, "off") == (False, [])
    assert check(int, True)[1] == ["k: expected an integer, got true"]
    assert check(Literal["a", "b"], "c")[1] == ["k: must be one of a, b (got 'c')"]


def test_every_problem_is_collected_with_its_key_path():
    problems: list[ConfigProblem] = []
    validate_options(Plugin, {"name": 5, "colour": "green", "pair": [1], "ratio": "nan",
                              "retris": 1}, "pipelines.p.sinks[0]", problems)
    assert sorted(str(p) for p in problems) == [
        "pipelines.p.sinks[0].colour: must be one of red, blue (got 'green')",
        "pipelines.p.sinks[0].limit: required",
        "pipelines.p.sinks[0].pair: expected a list of 2 items, got a list",
        "pipelines.p.sinks[0].ratio: expected a finite number, got str 'nan'",
        "pipelines.p.sinks[0].retris: unknown key (did you mean 'retries'?)",
    ]


def test_the_schema_accepts_the_example_config_and_rejects_a_typo():
    schema = config_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    example = yaml.safe_load((ROOT / "pipelines.yaml").read_text())
    jsonschema.validate(example, schema)
    example["pipelines"]["order-status"]["sinks"][0]["pth"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(example, schema)


def test_cdc_schema_prints_every_builtin_type():
    out = subprocess.run([sys.executable, "-m", "cdc", "schema"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True).stdout
    schema = json.loads(out)
    sinks = {s["properties"]["type"]["const"] for s in schema["$defs"]["sink"]["anyOf"]}
    assert {"file", "kafka", "rabbitmq", "redis", "http", "postgres", "mysql", "table"} <= sinks
    sources = schema["properties"]["sources"]["additionalProperties"]["anyOf"]
    assert {s["properties"]["type"]["const"] for s in sources} == {"postgres", "mysql"}
