"""Canary: cdc's MySQL reader (cdc/sources/mysql/source.py) uses private parts of
python-mysql-replication.  pyproject.toml pins the library below 1.1; if a new
version changes any of these, this test fails loudly before a user's pipeline does."""

from __future__ import annotations

import inspect

import pymysql
import pytest
from pymysqlreplication import BinLogStreamReader
from pymysqlreplication.packet import BinLogPacketWrapper

pytestmark = pytest.mark.unit

#: BinLogStreamReader.__init__ stores these name-mangled attributes; _Reader.wrap passes
#: them positionally to BinLogPacketWrapper, so their order matters too.
WRAPPER_ARGS = ("use_checksum", "allowed_events_in_packet", "only_tables", "ignored_tables",
                "only_schemas", "ignored_schemas", "freeze_schema", "ignore_decode_errors",
                "verify_checksum", "optional_meta_data", "enable_logging", "use_column_name_cache",
                "post_header_lengths")


def test_the_private_methods_cdc_overrides_or_calls_exist():
    for name in ("_BinLogStreamReader__connect_to_stream", "_BinLogStreamReader__connect_to_ctl"):
        assert callable(getattr(BinLogStreamReader, name, None)), f"BinLogStreamReader lost {name}"


def test_the_packet_wrapper_takes_the_arguments_cdc_passes_in_order():
    params = list(inspect.signature(BinLogPacketWrapper.__init__).parameters)
    assert params[1:5] == ["from_packet", "table_map", "ctl_connection", "mysql_version"], params
    wrapper_names = [{"allowed_events_in_packet": "allowed_events"}.get(n, n) for n in WRAPPER_ARGS]
    assert params[5:] == wrapper_names, params


def test_the_reader_stores_the_mangled_attributes_cdc_reads():
    source = inspect.getsource(BinLogStreamReader.__init__) + inspect.getsource(BinLogStreamReader)
    for name in (*WRAPPER_ARGS, "allowed_events", "connected_stream"):
        assert f"self.__{name}" in source, f"BinLogStreamReader no longer sets self.__{name}"
    for public in ("table_map", "mysql_version", "log_pos", "log_file", "_ctl_connection",
                   "_stream_connection"):
        assert f"self.{public}" in source, f"BinLogStreamReader no longer sets self.{public}"


def test_the_pymysql_internals_cdc_reads_exist():
    assert callable(getattr(pymysql.connections.Connection, "_read_packet", None))
    packet_source = inspect.getsource(pymysql.protocol.MysqlPacket)
    assert "self._data" in packet_source
    connect_source = inspect.getsource(pymysql.connections.Connection.connect)
    assert "self._rfile" in connect_source and "self._sock" in connect_source
