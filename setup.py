"""Optional C speed-ups of the hot paths.  Each has a pure-Python twin that gives the same
results; a machine without a C compiler installs cdc without them (``optional=True``), and
``CDC_PURE_PYTHON=1`` turns them off at run time."""

from setuptools import Extension, setup

SPEEDUPS = [("cdc.sources.postgres._cpgoutput", "cdc/sources/postgres/_cpgoutput.c"),
            ("cdc.sources.mysql._crows", "cdc/sources/mysql/_crows.c")]

setup(ext_modules=[Extension(name, [path], optional=True, extra_compile_args=["-O2"])
                   for name, path in SPEEDUPS])
