"""Transforms: plain callables ``event -> event | None | iterable of events``.

Built-ins are named here; plugins are referenced as ``{type: python, function:
"module:function"}``, as ``type: module:function``, or by name through the
entry-point group ``cdc.transforms``.  ``cdc.transforms.testing`` helps test them.
"""

from .chain import DropEvent, TransformChain

TRANSFORMS = {
    "filter": "cdc.transforms.builtin:Filter",
    "select": "cdc.transforms.builtin:Select",
    "rename": "cdc.transforms.builtin:Rename",
    "mask": "cdc.transforms.builtin:Mask",
    "route": "cdc.transforms.builtin:Route",
    "python": "cdc.transforms.builtin:Python",
    "outbox": "cdc.transforms.outbox:Outbox",
}

__all__ = ["TRANSFORMS", "TransformChain", "DropEvent"]
