"""Config loading: interpolation, key-path errors, and `cdc validate`."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cdc.config import parse_config
from cdc.errors import ConfigError

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
sources:
  shop:
    type: postgres
    dsn: ${SHOP_DSN:-postgresql://cdc@127.0.0.1:5432/shop}
    tables: [orders, public.customers]
    checkpoint: {type: file, path: state/shop.json}
    max_in_flight_events: ${LIMIT:-5000}
pipelines:
  p:
    source: shop
    tables: [orders]
    sinks:
      - {type: file, path: out/x.jsonl, retry: {max_attempts: 3}}
"""


def parse(text: str, env: dict | None = None, tmp: Path = Path("/tmp/cfg.yaml")):
    return parse_config(yaml.safe_load(text), tmp, env or {})


def problems(text: str, env: dict | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return [str(p) for p in info.value.problems]


def test_valid_config_with_defaults_and_interpolation():
    cfg = parse(GOOD, {"LIMIT": "42"})
    src = cfg.sources["shop"]
    assert src.options["dsn"] == "postgresql://cdc@127.0.0.1:5432/shop"
    assert src.tables == ["public.orders", "public.customers"]  # qualified
    assert src.max_in_flight_events == 42  # string from the environment, converted
    sink = cfg.pipelines["p"].sinks[0]
    assert sink.retry.max_attempts == 3 and sink.on_error == "retry"
    assert cfg.pipelines["p"].tables == ["public.orders"]


def test_interpolation_forms():
    cfg = parse(GOOD.replace("${SHOP_DSN:-postgresql://cdc@127.0.0.1:5432/shop}", "${SHOP_DSN}"),
                {"SHOP_DSN": "postgresql://a@b/c"})
    assert cfg.sources["shop"].options["dsn"] == "postgresql://a@b/c"
    found = problems(GOOD.replace("${SHOP_DSN:-postgresql://cdc@127.0.0.1:5432/shop}",
                                  "${SHOP_DSN:?set it to the shop database}"))
    assert found == ["sources.shop.dsn: ${SHOP_DSN}: set it to the shop database"]
    cfg = parse(GOOD.replace("out/x.jsonl", "\"out/$${{x}}.jsonl\""))  # $$ is a literal $, {{ a literal {
    assert cfg.pipelines["p"].sinks[0].options["path"] == "out/${{x}}.jsonl"


def test_an_empty_key_is_named_in_an_interpolation_problem():
    # found by tests/test_fuzz_config.py: the problem of {"": "${"} had an empty key path
    from cdc.config.interpolate import interpolate
    found: list = []
    interpolate({"": "${", "a": {"": "${X"}}, {}, found)
    assert [p.path for p in found] == ["''", "a."]


def test_every_problem_with_its_key_path():
    bad = GOOD.replace("tables: [orders]", "tables: [orders, public.nope]") \
              .replace("{type: file, path: out/x.jsonl, retry: {max_attempts: 3}}",
                       "{type: file, pth: out/x.jsonl, on_error: explode}") \
              .replace("type: postgres", "type: postgres\n    slto: x")
    assert problems(bad) == [
        "sources.shop.slto: unknown key (did you mean 'slot'?)",
        "pipelines.p.tables[1]: public.nope is not among the tables of source shop (public.orders, public.customers)",
        "pipelines.p.sinks[0].on_error: must be one of retry, dead_letter, skip, stop (got 'explode')",
        "pipelines.p.sinks[0].pth: unknown key (did you mean 'path'?)",
        "pipelines.p.sinks[0].path: required",
    ]


def test_unknown_types_and_missing_sections():
    assert problems("sources: {}\n") == ["sources: expected a mapping of names to definitions",
                                         "pipelines: required"]
    found = problems(GOOD.replace("type: file, path: out", "type: fiel, path: out"))
    assert found[0].startswith("pipelines.p.sinks[0].type: unknown type 'fiel'")
    found = problems(GOOD.replace("max_in_flight_events: ${LIMIT:-5000}", "max_in_flight_events: lots"))
    assert found == ["sources.shop.max_in_flight_events: expected an integer, got str 'lots'"]


def _cdc(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cdc", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT)


def test_cdc_validate_exit_codes_and_no_traceback(tmp_path):
    ok = _cdc("validate", str(ROOT / "pipelines.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "valid" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("path: out/x.jsonl, ", "").replace("postgresql://cdc@", "postgresql://cdc:hunter2@"))
    out = _cdc("validate", str(bad))
    assert out.returncode == 2
    assert "pipelines.p.sinks[0].path: required" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text("sources: [\n")
    out = _cdc("validate", str(broken))
    assert out.returncode == 2 and "not valid YAML at line" in out.stderr and "Traceback" not in out.stderr
    missing = _cdc("validate", str(tmp_path / "none.yaml"))
    assert missing.returncode == 2 and "cannot read config" in missing.stderr


def test_components_are_built_while_validating_and_secrets_stay_out(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(GOOD.replace("${SHOP_DSN:-postgresql://cdc@127.0.0.1:5432/shop}",
                                "postgresql://cdc:hunter2%zz@db/shop")
                       .replace("max_in_flight_events: ${LIMIT:-5000}", "max_in_flight_events: 0")
                       .replace("retry: {max_attempts: 3}", "batch_size: 0"))
    out = _cdc("validate", str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "sources.shop: invalid: ProgrammingError: invalid percent-encoded token" in out.stderr
    assert "sources.shop.max_in_flight_events: must be at least 1 (got 0)" in out.stderr
    assert "pipelines.p.sinks[0].batch_size: must be at least 1 (got 0)" in out.stderr
    assert "hunter2" not in out.stderr + out.stdout
