"""``cdc validate`` on broken configs: every problem with its key path, exit 2, never a
traceback (issue: sources that never lose silently, "Crashes and halts on bad data")."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

BASE = """\
sources:
  shop:
    type: postgres
    dsn: postgresql://u@127.0.0.1/shop
    tables: [orders]
    checkpoint: {type: file, path: state/shop.json}
pipelines:
  p:
    source: shop
    sinks: [{type: file, path: out/x.jsonl}]
"""


def validate(tmp_path, text: str | bytes) -> tuple[int, str]:
    path = tmp_path / "pipelines.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    proc = subprocess.run([sys.executable, "-m", "cdc", "validate", str(path)], capture_output=True,
                          text=True, timeout=60)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout + proc.stderr


def test_a_file_that_is_not_utf8(tmp_path):
    code, out = validate(tmp_path, b"sources:\n  shop: \xff\xfe\n")
    assert code == 2 and "not UTF-8" in out and "line 2" in out, out


def test_tables_that_are_not_a_list(tmp_path):
    code, out = validate(tmp_path, BASE.replace("tables: [orders]", "tables: 5"))
    assert code == 2 and "sources.shop.tables: expected a list, got int 5" in out, out


def test_two_problems_at_once(tmp_path):
    code, out = validate(tmp_path, BASE.replace("tables: [orders]", "tables: 5")
                         .replace("type: file, path: out", "type: nope, path: out"))
    assert code == 2 and "2 problems" in out, out
    assert "sources.shop.tables" in out and "pipelines.p.sinks[0].type: unknown type 'nope'" in out, out


@pytest.mark.parametrize("extra, where, line", [
    ("pipelines:\n  q:\n    source: shop\n    sinks: [{type: stdout}]\n", "pipelines", 11),
    ("", "pipelines.p.source", 10),
])
def test_a_duplicate_key_is_an_error(tmp_path, extra, where, line):
    text = BASE + extra if extra else BASE.replace("    source: shop\n", "    source: shop\n    source: shop\n")
    code, out = validate(tmp_path, text)
    assert code == 2 and f"{where}: duplicate key (line {line}" in out, out


def test_an_unknown_template_field(tmp_path):
    code, out = validate(tmp_path, BASE.replace("path: out/x.jsonl", 'path: "out/{nope}.jsonl"'))
    assert code == 2 and "pipelines.p.sinks[0].path: unknown template field {nope}" in out, out


def test_negative_retry_settings(tmp_path):
    code, out = validate(tmp_path, BASE.replace(
        "path: out/x.jsonl}", "path: out/x.jsonl, retry: {max_attempts: -1, initial_backoff: -2, max_backoff: 0}}"))
    assert code == 2, out
    for key in ("retry.max_attempts: must be at least 0", "retry.initial_backoff: must be more than 0",
                "retry.max_backoff: must be more than 0"):
        assert f"pipelines.p.sinks[0].{key}" in out, out


def test_a_python_transform_that_cannot_take_one_event(tmp_path):
    (tmp_path / "plugs.py").write_text("def two(a, b):\n    return a\n\ndef none():\n    return None\n")
    text = BASE.replace("    sinks:", "    transforms:\n      - {type: python, function: 'plugs:two'}\n"
                                     "      - {type: python, function: 'plugs:none'}\n    sinks:")
    code, out = validate(tmp_path, text)
    assert code == 2, out
    assert "pipelines.p.transforms[0]" in out and "pipelines.p.transforms[1]" in out, out
    assert "cannot be called with one event" in out, out


def test_an_unclosed_variable(tmp_path):
    code, out = validate(tmp_path, BASE.replace("dsn: postgresql://u@127.0.0.1/shop", "dsn: ${SHOP_DSN"))
    assert code == 2 and "sources.shop.dsn: unclosed ${SHOP_DSN (write ${NAME} or ${NAME:-default})" in out, out


def test_two_sources_may_not_share_a_checkpoint_or_a_slot(tmp_path):
    second = ("  shop2:\n    type: postgres\n    dsn: postgresql://u@127.0.0.1/shop\n    tables: [orders]\n"
              "    slot: cdc_shop_shop\n    checkpoint: {type: file, path: ./state/../state/shop.json}\n")
    code, out = validate(tmp_path, BASE.replace("pipelines:\n", second + "pipelines:\n", 1))
    assert code == 2, out
    assert "sources.shop2.checkpoint: the same checkpoint as source shop" in out, out
    assert "sources.shop2.slot: slot cdc_shop_shop is also the slot of source shop" in out, out


def test_sources_may_share_a_postgres_checkpoint_table(tmp_path):
    """The ``postgres`` store keeps one row per source: a shared table is no shared checkpoint."""
    text = BASE.replace("checkpoint: {type: file, path: state/shop.json}",
                        "checkpoint: {type: postgres, dsn: 'postgresql://u@127.0.0.1/state'}")
    second = ("  shop2:\n    type: postgres\n    dsn: postgresql://u@127.0.0.1/shop\n    tables: [orders]\n"
              "    checkpoint: {type: postgres, dsn: 'postgresql://u@127.0.0.1/state'}\n")
    code, out = validate(tmp_path, text.replace("pipelines:\n", second + "pipelines:\n", 1))
    assert code == 0, out


@pytest.mark.unit
@pytest.mark.parametrize("name", ["&ashop", "123", "~"])
def test_a_source_or_pipeline_named_by_something_not_text_is_a_config_error(tmp_path, name):
    """A YAML anchor written as a key (``&ashop:``) makes the name null: that was a TypeError
    (found by tests/test_fuzz_config.py)."""
    text = ("sources:\n  " + name + ":\n    type: postgres\n    dsn: postgresql://u@127.0.0.1/shop\n"
            "    tables: [public.orders]\n    checkpoint: {type: memory}\n"
            "pipelines:\n  " + name.replace("&ashop", "&apipe") + ": {source: shop, sinks: [{type: stdout}]}\n")
    code, out = validate(tmp_path, text)
    assert code == 2 and "Traceback" not in out, out
    assert "sources: a name must be text" in out and "pipelines: a name must be text" in out, out
