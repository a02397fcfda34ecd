"""Configuration: the YAML file, validated into specs with key-path errors.

- ``loader``: read, interpolate ``${VAR}``, validate (``load_config``, ``parse_config``);
- ``model``: the specs (``Config``, ``SourceSpec``, ``PipelineSpec``, ``SinkSpec``, ``Context``);
- ``layout``: the keys of the file, walked with every problem collected;
- ``options``: a component's options checked against its constructor's signature;
- ``interpolate``: ``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}``;
- ``registry``: ``type:`` names to classes (built-ins, entry points, ``module:Class``);
- ``jsonschema``: the JSON Schema of the whole file (``cdc schema``).
"""

from .loader import load_config, parse_config
from .model import Component, Config, Context, PipelineSpec, RetryOptions, SinkSpec, SourceSpec

__all__ = ["Config", "SourceSpec", "PipelineSpec", "SinkSpec", "Component", "Context",
           "RetryOptions", "load_config", "parse_config"]
