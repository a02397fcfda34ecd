"""docker/Dockerfile and docker/compose.yaml cannot be run here (no docker), so they are
checked by construction: they parse, pin their versions, have healthchecks, and the
server settings in compose.yaml pass ``cdc check`` on real servers started with them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from urllib.parse import urlsplit

import psycopg
import yaml

from _ops_helpers import ROOT
from mysql_helpers import preflight
from servers import MariaDBServer, PostgresServer

DOCKER = ROOT / "docker"


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (DOCKER / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            assert word.isupper(), f"not a Dockerfile instruction: {line}"
            out.append((word, rest.strip()))
    return out


def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def flags(command: list[str]) -> dict[str, str]:
    """``--binlog-format=ROW`` / ``-c wal_level=logical`` -> {"binlog_format": "ROW", ...}"""
    out = {}
    for arg in command:
        if "=" in arg:
            key, value = arg.lstrip("-").split("=", 1)
            out[key.replace("-", "_")] = value
    return out


def test_dockerfile_parses_and_follows_the_rules():
    assert "NOT RUN HERE" in (DOCKER / "Dockerfile").read_text()
    steps = dockerfile()
    assert steps[0][0] == "FROM"
    assert re.fullmatch(r"python:3\.\d+\.\d+-slim-\w+", steps[0][1]), "a pinned slim Python base"
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    entry = [json.loads(args) for word, args in steps if word == "ENTRYPOINT"]
    assert entry == [["cdc"]]
    cmd = [json.loads(args) for word, args in steps if word == "CMD"][-1]
    assert cmd == ["run", "/config/pipelines.yaml"]
    for word, args in steps:
        if word == "COPY":
            for src in args.split()[:-1]:
                assert list(ROOT.glob(src)) or src.endswith("*"), f"COPY source {src} missing"
    pins = [line for line in (DOCKER / "constraints.txt").read_text().splitlines()
            if line and not line.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[\w.]+", p) for p in pins), "every package pinned"
    pinned = {p.split("==")[0].lower().replace("_", "-") for p in pins}
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        name = re.split(r"[<>=\[ ]", dep)[0].lower()
        assert name in pinned, f"core dependency {name} is not pinned"


def test_compose_parses_pins_images_and_has_healthchecks():
    assert "NOT RUN HERE" in (DOCKER / "compose.yaml").read_text()
    services = compose()["services"]
    assert set(services) == {"postgres", "mysql", "kafka", "cdc"}
    for name, svc in services.items():
        tag = svc["image"].rpartition(":")[2]
        assert re.search(r"\d+\.\d+", tag) and "latest" not in tag, f"{name}: image not pinned"
        assert svc["healthcheck"]["test"], f"{name}: no healthcheck"
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: bind to 127.0.0.1"
    assert services["mysql"]["image"].startswith("mysql:8.")
    kafka = services["kafka"]["environment"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"] and not any("ZOOKEEPER" in k for k in kafka)
    cdc = services["cdc"]
    assert (ROOT / cdc["build"]["context"].replace("..", ".") / cdc["build"]["dockerfile"]).exists()
    mounts = {m.split(":")[1]: m.split(":")[0] for m in cdc["volumes"]}
    assert mounts["/config/pipelines.yaml"] == "../pipelines.yaml" and cdc["command"][1] == "/config/pipelines.yaml"
    for src in mounts.values():
        assert not src.startswith(".") or (DOCKER / src).exists(), src
    volumes = {args.strip('[]" ') for word, args in dockerfile() if word == "VOLUME"}
    assert "/config/state" in next(iter(volumes)) and "/config/state" in mounts
    dsn = urlsplit(cdc["environment"]["SHOP_DSN"])
    pg = services["postgres"]["environment"]
    assert (dsn.hostname, dsn.username, dsn.password, dsn.path[1:]) == \
        ("postgres", pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])
    assert cdc["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_compose_postgres_settings_pass_cdc_check(tmp_path):
    settings = flags(compose()["services"]["postgres"]["command"])
    assert settings["wal_level"] == "logical"
    with PostgresServer(settings=settings) as server:
        dsn = server.create_database("shop")
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute((DOCKER / "postgres-init.sql").read_text())
        for name in ("pipelines.yaml", "myplugins.py"):   # the example config, as compose mounts it
            shutil.copy(ROOT / name, tmp_path / name)
        proc = subprocess.run([sys.executable, "-m", "cdc", "check", "pipelines.yaml", "--json"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "SHOP_DSN": dsn, "PYTHONPATH": str(ROOT)})
    findings = json.loads(proc.stdout)
    assert proc.returncode == 0 and {f["level"] for f in findings} == {"ok"}, findings


def test_compose_mysql_settings_pass_cdc_check():
    settings = flags(compose()["services"]["mysql"]["command"])
    # GTIDs: what cdc check asks of MySQL (MariaDB has its own GTIDs, always on)
    assert settings.pop("gtid_mode") == "ON" and settings.pop("enforce_gtid_consistency") == "ON"
    with MariaDBServer(settings=settings) as server:
        with server.connect() as root, root.cursor() as cur:
            cur.execute("CREATE DATABASE shop")
            for statement in (DOCKER / "mysql-init.sql").read_text().split(";"):
                body = "\n".join(line for line in statement.splitlines() if not line.startswith("--"))
                if body.strip():
                    cur.execute(body)
        problems = preflight(server.dsn("shop", user="cdc"), checkpoint_age=3600)
    assert problems == [], problems
