"""The curated public API: everything in __all__ exists, and nothing else leaks in."""

import pytest

import cdc

pytestmark = pytest.mark.unit


def test_all_names_exist_and_are_curated():
    for name in cdc.__all__:
        assert hasattr(cdc, name), name
    assert len(cdc.__all__) == len(set(cdc.__all__))
    public = {n for n in vars(cdc) if not n.startswith("_")}
    submodules = {n for n in public if type(getattr(cdc, n)).__name__ == "module"}
    assert public - submodules - {"__version__"} == set(cdc.__all__)


def test_errors_are_classified_for_retry_policies():
    assert issubclass(cdc.TransientSinkError, cdc.TransientError)
    assert issubclass(cdc.PermanentSinkError, cdc.PermanentError)
    assert issubclass(cdc.SourceConnectionError, cdc.TransientError)
    assert issubclass(cdc.SourceSetupError, cdc.PermanentError)
    assert issubclass(cdc.TransformError, cdc.CdcError)
