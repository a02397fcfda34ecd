"""Config fuzzing (hypothesis): random mutations of valid configs (value types, keys,
nesting, YAML syntax, ``${...}`` syntax) never produce a traceback from ``cdc validate``;
every problem names its key path (or, for a file that is not YAML or not a mapping, the
line and column or that it must be a mapping)."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdc.config import load_config
from cdc.errors import ConfigError

pytestmark = pytest.mark.unit

BASES = [
    {"sources": {"shop": {"type": "postgres", "dsn": "${SHOP_DSN:-postgresql://cdc@127.0.0.1:5432/shop}",
                          "tables": ["public.orders", "customers"], "checkpoint": {"type": "file", "path": "s.json"},
                          "max_in_flight_events": 100, "checkpoint_interval": 0.5, "heartbeat_interval": 10}},
     "pipelines": {"copy": {"source": "shop", "tables": ["public.orders"],
                            "transforms": [{"type": "filter", "where": {"op": ["c", "u"], "amount": {"gt": 100}}},
                                           {"type": "select", "fields": ["id", "status"]},
                                           {"type": "rename", "fields": {"status": "state"}},
                                           {"type": "mask", "fields": ["id"], "method": "hash", "salt": "s"}],
                            "sinks": [{"type": "file", "path": "out/{table}.jsonl", "fsync": False},
                                      {"type": "stdout", "pretty": True}]}},
     "metrics": {"listen": "127.0.0.1:9100"}},
    {"sources": {"legacy": {"type": "mysql", "dsn": "mysql://cdc:${PW:?set PW}@127.0.0.1:3306/shop", "server_id": 42,
                            "tables": ["shop.orders"],
                            "checkpoint": {"type": "postgres", "dsn": "postgresql://x@127.0.0.1/c"}}},
     "pipelines": {"k": {"source": "legacy",
                         "sinks": [{"type": "kafka", "bootstrap_servers": "127.0.0.1:9092", "topic": "cdc.{table}",
                                    "on_error": "dead_letter", "retry": {"max_attempts": 3, "initial_backoff": 0.1},
                                    "dead_letter": {"type": "file", "path": "dlq.jsonl"}}]}}},
    {"sources": {"db": {"type": "postgres", "dsn": "postgresql://a@127.0.0.1/db", "tables": ["outbox"],
                        "checkpoint": {"type": "file", "path": "state/db.json"}}},
     "pipelines": {"out": {"source": "db", "transforms": [{"type": "outbox", "destination": "{message_type}"}],
                           "sinks": [{"type": "http", "url": "https://hooks.example.com/{destination}",
                                      "batch_size": 1, "content": "payload", "secret": "$${literal}"}]}}},
]
ENV = {"SHOP_DSN": "postgresql://cdc@127.0.0.1:5432/shop", "PW": "pw", "EMPTY": "", "PORT": "5432"}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["${SHOP_DSN}", "${NOPE}", "${NOPE:?need it}", "${EMPTY:-x}",
                                                           "${PORT}", "${", "${PORT", "$${X}", "${}", "${1}", "${A-b}",
                                                           "${ :-}", "$", "{table}", "{nope}", "-1", "1e309",
                                                           "file", "postgres", "mysql", "retry", "..", "/", "\0"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


def _get(node, path):
    for p in path:
        node = node[p]
    return node


@st.composite
def mutated_trees(draw):
    tree = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        paths = list(_paths(tree))
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete", "add", "wrap_list", "wrap_dict"]))
        if not path:
            if action == "replace":
                tree = draw(values)
            continue
        parent, key = _get(tree, path[:-1]), path[-1]
        if action == "replace":
            parent[key] = draw(values)
        elif action == "delete":
            del parent[key]
        elif action == "add":
            target = parent[key]
            if isinstance(target, dict):
                target[draw(st.text(max_size=10))] = draw(values)
            elif isinstance(target, list):
                target.append(draw(values))
        elif action == "wrap_list":
            parent[key] = [parent[key]]
        else:
            parent[key] = {draw(st.sampled_from(["type", "x", "path"])): parent[key]}
        if not isinstance(tree, (dict, list)):
            break
    return tree


YAML_BITS = ["\t", ":", ": ", "- ", "[", "]", "{", "}", "\"", "'", "#", "&a", "*a", "!!python/object:os.system",
             "!!binary", "? ", "|", ">", "%", "@", "`", "\n", "\n  ", "${", "}", "\ufeff", "\x00", "\x85", "---\n"]


@st.composite
def mutated_texts(draw):
    text = yaml.safe_dump(draw(st.sampled_from(BASES)), sort_keys=False)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "dup_line", "indent"]))
        if kind == "insert":
            text = text[:at] + draw(st.sampled_from(YAML_BITS)) + text[at:]
        elif kind == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)):]
        elif kind == "dup_line":
            lines = text.splitlines(keepends=True)
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            text = "".join(lines)
        else:
            lines = text.splitlines(keepends=True)
            i = draw(st.integers(0, len(lines) - 1))
            lines[i] = " " * draw(st.integers(1, 3)) + lines[i]
            text = "".join(lines)
    return text


WHOLE_FILE = re.compile(r"line \d+|must be a mapping|UTF-8")


def _check(path: Path) -> None:
    try:
        load_config(path, ENV)
    except ConfigError as exc:
        assert exc.problems, exc
        for problem in exc.problems:
            assert problem.path or WHOLE_FILE.search(problem.message), f"no key path: {problem!r}"
            assert problem.message.strip(), f"an empty message: {problem!r}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(tree=mutated_trees())
def test_mutated_configs_give_key_paths(tree, tmp_path):
    path = tmp_path / "pipelines.yaml"
    path.write_text(yaml.safe_dump(tree, allow_unicode=True))
    _check(path)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(text=mutated_texts())
def test_broken_yaml_gives_a_line_or_a_key_path(text, tmp_path):
    path = tmp_path / "pipelines.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    _check(path)


def test_bases_are_valid(tmp_path):
    for i, tree in enumerate(BASES):
        path = tmp_path / f"base{i}.yaml"
        path.write_text(yaml.safe_dump(tree))
        load_config(path, ENV)


@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(tree=mutated_trees(), text=mutated_texts())
def test_cdc_validate_never_shows_a_traceback(tree, text, tmp_path):
    for name, body in (("tree.yaml", yaml.safe_dump(tree, allow_unicode=True)), ("text.yaml", text)):
        path = tmp_path / name
        path.write_bytes(body.encode("utf-8", "surrogatepass"))
        proc = subprocess.run([sys.executable, "-m", "cdc", "validate", str(path)], capture_output=True, text=True,
                              timeout=60, env={**ENV, "PATH": "/usr/bin:/bin"})
        assert proc.returncode in (0, 2), (proc.returncode, proc.stderr)
        assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
