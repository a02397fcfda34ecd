"""Two database sinks writing the same target table are not ordered against each other:
each keeps its own position, so an older change applied by one can overwrite a newer one
applied by the other. ``cdc validate``, ``cdc check`` and ``cdc run`` say so (a warning: rows
of shards that never share a key may be merged into one table on purpose)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from cdc.config import parse_config
from cdc.config.targets import shared_target_tables
from cdc.errors import ConfigError

TARGET = "postgresql://cdc@127.0.0.1:5499/mirror"


def _raw(pipelines: dict, tables=("public.orders", "public.items")) -> dict:
    return {"sources": {"shop": {"type": "postgres", "dsn": "postgresql://cdc@127.0.0.1:5432/shop",
                                 "tables": list(tables), "checkpoint": {"type": "file", "path": "s.json"}}},
            "pipelines": pipelines}


def _mirror(dsn: str = TARGET, **options) -> dict:
    return {"type": "postgres", "dsn": dsn, **options}


def _warnings(raw: dict, tmp_path) -> list[tuple[str, str]]:
    return shared_target_tables(parse_config(raw, tmp_path / "c.yaml", {}))


def test_two_pipelines_mirroring_one_table_are_named(tmp_path):
    found = _warnings(_raw({"a": {"source": "shop", "sinks": [_mirror()]},
                            "b": {"source": "shop", "tables": ["orders"], "sinks": [_mirror()]}}), tmp_path)
    assert len(found) == 1, found
    path, message = found[0]
    assert path == "pipelines.b.sinks[0]"
    assert "table public.orders of 127.0.0.1:5499/mirror" in message and "a.sinks[0]:postgres" in message
    assert "not ordered" in message


def test_renamed_targets_and_other_databases_count_as_they_are_written(tmp_path):
    renamed = _mirror(tables={"public.items": {"table": "orders"}})  # items written into orders
    found = _warnings(_raw({"a": {"source": "shop", "tables": ["orders"], "sinks": [_mirror()]},
                            "b": {"source": "shop", "tables": ["items"], "sinks": [renamed]}}), tmp_path)
    assert [p for p, _ in found] == ["pipelines.b.sinks[0]"], found
    # disjoint tables, or another database: nothing to say
    assert _warnings(_raw({"a": {"source": "shop", "tables": ["orders"], "sinks": [_mirror()]},
                           "b": {"source": "shop", "tables": ["items"], "sinks": [_mirror()]}}), tmp_path) == []
    assert _warnings(_raw({"a": {"source": "shop", "sinks": [_mirror()]},
                           "b": {"source": "shop", "sinks": [_mirror(TARGET.replace("mirror", "other"))]}}),
                     tmp_path) == []
    # two sinks of one pipeline
    found = _warnings(_raw({"a": {"source": "shop", "sinks": [_mirror(), _mirror("postgresql://x@127.0.0.1:5499/mirror")]}}),
                      tmp_path)
    assert [p for p, _ in found] == ["pipelines.a.sinks[1]"], found  # one warning for the pair
    assert "writes 2 tables (table public.orders of" in found[0][1] and "table public.items of" in found[0][1]
    # found by review: two sinks given the same name (keyed by name, they looked like one sink)
    named = _raw({"a": {"source": "shop", "sinks": [_mirror(name="copy")]},
                  "b": {"source": "shop", "sinks": [_mirror(name="copy")]}})
    with pytest.raises(ConfigError) as err:
        _warnings(named, tmp_path)
    assert "pipelines.b.sinks[0].name" in str(err.value) and "pipelines.a.sinks[0]" in str(err.value)


def test_cdc_run_of_one_source_names_only_its_own_sinks(tmp_path):
    raw = _raw({"a": {"source": "shop", "sinks": [_mirror()]}, "b": {"source": "shop", "sinks": [_mirror()]}})
    raw["sources"]["other"] = {**raw["sources"]["shop"], "checkpoint": {"type": "file", "path": "o.json"}}
    raw["pipelines"]["c"] = {"source": "other", "tables": ["items"], "sinks": [_mirror(TARGET.replace("mirror", "x"))]}
    raw["pipelines"]["d"] = {"source": "other", "tables": ["items"], "sinks": [_mirror(TARGET.replace("mirror", "x"))]}
    cfg = parse_config(raw, tmp_path / "c.yaml", {})
    assert [p for p, _ in shared_target_tables(cfg)] == ["pipelines.b.sinks[0]", "pipelines.d.sinks[0]"]
    assert [p for p, _ in shared_target_tables(cfg, "shop")] == ["pipelines.b.sinks[0]"]
    assert [p for p, _ in shared_target_tables(cfg, "other")] == ["pipelines.d.sinks[0]"]


def test_cdc_validate_prints_the_warning_and_exits_0(tmp_path):
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(_raw({"a": {"source": "shop", "sinks": [_mirror()]},
                                         "b": {"source": "shop", "sinks": [_mirror()]}})))
    proc = subprocess.run([sys.executable, "-m", "cdc", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout
    assert proc.stderr.count("warning:") == 1, proc.stderr
    assert "warning: pipelines.b.sinks[0]: writes 2 tables (table public.orders of 127.0.0.1:5499/mirror" \
        in proc.stderr, proc.stderr


def test_cdc_run_logs_the_warning_at_start(tmp_path):
    """Before it connects (here to nothing: the run then fails, as it should)."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    raw = _raw({"a": {"source": "shop", "tables": ["orders"], "sinks": [_mirror()]},
                "b": {"source": "shop", "tables": ["orders"], "sinks": [_mirror()]}})
    raw["sources"]["shop"]["dsn"] = f"postgresql://cdc@127.0.0.1:{port}/shop"
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(raw))
    proc = subprocess.Popen([sys.executable, "-m", "cdc", "run", str(path)], stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path)
    try:
        seen = []
        for line in proc.stderr:  # the warning comes first: no need to wait for the connection to fail
            seen.append(line)
            if "WARNING" in line and "pipelines.b.sinks[0]: writes table public.orders of" in line:
                break
        else:
            raise AssertionError("".join(seen))
    finally:
        proc.kill()
        proc.wait(10)


def test_a_dsn_that_does_not_parse_is_no_crash_and_no_leak(tmp_path):
    """Found by review: target_of parsed each mirror's DSN outside any guard, so a DSN that
    does not parse made cdc validate (and check, and run) exit with a traceback holding it."""
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(_raw({"a": {"source": "shop", "sinks": [
        _mirror("postgresql://cdc:s3cret@[::1/mirror"), _mirror("mysql://u:s3cret@h:99999999/db")]}})))
    proc = subprocess.run([sys.executable, "-m", "cdc", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0 and "valid" in proc.stdout, proc.stderr
    assert "Traceback" not in proc.stderr and "s3cret" not in proc.stdout + proc.stderr
