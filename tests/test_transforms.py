"""Built-in transforms and the plugin contract, without a database."""

import pytest

from cdc import DropEvent, TransformError
from cdc.transforms.builtin import Filter, Mask, Python, Rename, Route, Select
from cdc.transforms.chain import TransformChain
from cdc.transforms.testing import make_event, run_transform

pytestmark = pytest.mark.unit

ORDER = {"id": 7, "customer_id": 3, "status": "paid", "amount": "120.50", "note": "x"}


def test_filter_by_op_table_and_columns():
    keep_cu = Filter(where={"op": ["c", "u"]})
    assert run_transform(keep_cu, make_event("c", after=ORDER))
    assert not run_transform(keep_cu, make_event("d", before=ORDER))
    by_table = Filter(where={"table": "public.customers"})
    assert not run_transform(by_table, make_event("c", after=ORDER))
    assert run_transform(by_table, make_event("c", after=ORDER, table="public.customers"))
    big = Filter(where={"amount": {"gt": 100}, "status": ["paid", "shipped"]})
    assert run_transform(big, make_event("c", after=ORDER))
    assert not run_transform(big, make_event("c", after={**ORDER, "amount": "99.99"}))
    assert not run_transform(big, make_event("c", after={**ORDER, "status": "new"}))


def test_filter_changed_null_and_drop_mode():
    changed = Filter(where={"status": {"changed": True}})
    same = make_event("u", before=ORDER, after={**ORDER, "note": "y"})
    moved = make_event("u", before=ORDER, after={**ORDER, "status": "shipped"})
    assert run_transform(changed, same) == []
    assert run_transform(changed, moved) == [moved]
    no_note = Filter(where={"note": {"null": True}}, drop=True)
    assert run_transform(no_note, make_event("c", after={**ORDER, "note": None})) == []
    assert len(run_transform(no_note, make_event("c", after=ORDER))) == 1


def test_select_rename_mask_route():
    event = make_event("u", before=ORDER, after={**ORDER, "status": "shipped"})
    [selected] = run_transform(Select(fields=["id", "status"]), event)
    assert selected.after == {"id": 7, "status": "shipped"} and selected.before == {"id": 7, "status": "paid"}
    [renamed] = run_transform(Rename(fields={"id": "order_id"}), event)
    assert renamed.after["order_id"] == 7 and "id" not in renamed.after and renamed.key == {"order_id": 7}
    [hashed] = run_transform(Mask(fields=["note"], salt="s"), event)
    assert hashed.after["note"] != "x" and len(hashed.after["note"]) == 64
    assert hashed.after["note"] == hashed.before["note"]  # equal values still join
    [redacted] = run_transform(Mask(fields=["note"], method="redact"), event)
    assert redacted.after["note"] is None
    [routed] = run_transform(Route(destination="{source}.{schema}.{table}"), event)
    assert routed.destination == "test.public.orders"


def test_select_rename_and_mask_keep_json_null_in_step():
    """``source.json_null`` names columns of ``after``: it follows a rename, loses the columns
    a select drops and those a mask replaces (their value is no longer the source's)."""
    doc = {"id": 7, "doc": None, "meta": None, "note": None}
    event = make_event("c", after=doc, json_null=["doc", "meta"])
    [renamed] = run_transform(Rename(fields={"doc": "document"}), event)
    assert renamed.source["json_null"] == ["document", "meta"] and renamed.after["document"] is None
    [selected] = run_transform(Select(fields=["id", "doc", "note"]), event)
    assert selected.source["json_null"] == ["doc"]
    [none_left] = run_transform(Select(fields=["id", "note"]), event)
    assert "json_null" not in none_left.source
    [masked] = run_transform(Mask(fields=["meta"], method="redact"), event)
    assert masked.source["json_null"] == ["doc"]
    [untouched] = run_transform(Rename(fields={"note": "remark"}), make_event("c", after=doc))
    assert "json_null" not in untouched.source


def test_python_plugin_and_factory(tmp_path, monkeypatch):
    (tmp_path / "plug.py").write_text(
        "def only_paid(e):\n    return e if (e.after or {}).get('status') == 'paid' else None\n"
        "def above(limit):\n    return lambda e: e if float(e.after['amount']) > limit else None\n"
        "def split(e):\n    return [e.replace(id=e.id + 'a'), e.replace(id=e.id + 'b')]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    paid = make_event("c", after=ORDER)
    assert run_transform(Python(function="plug:only_paid"), paid) == [paid]
    assert run_transform(Python(function="plug:above", options={"limit": 500}), paid) == []
    assert [e.id for e in run_transform(Python(function="plug:split"), paid)] == ["0/16B3748:0a", "0/16B3748:0b"]


def test_drop_event_and_errors_name_the_event():
    def dropper(e):
        raise DropEvent

    def broken(e):
        return e.after["missing"]

    assert run_transform(dropper, make_event("c", after=ORDER)) == []
    chain = TransformChain("orders", [("transforms[0]:python", broken)])
    with pytest.raises(TransformError) as info:
        chain.apply([make_event("c", after=ORDER, id="0/AB:3")])
    text = str(info.value)
    assert "0/AB:3" in text and "public.orders" in text and "orders" in text and "KeyError" in text


def test_run_transform_catches_mutation():
    def mutate(e):
        e.after["status"] = "oops"
        return e

    with pytest.raises(AssertionError, match="changed its input"):
        run_transform(mutate, make_event("c", after=dict(ORDER)))


def test_transform_from_an_installed_entry_point(tmp_path, monkeypatch):
    """An installed package publishes `only_big` under the group cdc.transforms."""
    import yaml

    from cdc.config import parse_config
    (tmp_path / "bigplug.py").write_text("def only_big(e):\n    return e if e.after['amount'] > 100 else None\n")
    dist = tmp_path / "bigplug-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bigplug\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[cdc.transforms]\nonly_big = bigplug:only_big\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    raw = yaml.safe_load("""
sources: {s: {type: postgres, dsn: "postgresql://x@h/db", tables: [t], checkpoint: {type: memory}}}
pipelines: {p: {source: s, transforms: [{type: only_big}], sinks: [{type: stdout}]}}
""")
    cfg = parse_config(raw, tmp_path / "c.yaml", {})
    transform = cfg.pipelines["p"].transforms[0].build()
    assert run_transform(transform, make_event("c", after={"id": 1, "amount": 500}))
    assert run_transform(transform, make_event("c", after={"id": 2, "amount": 5})) == []
