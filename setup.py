from setuptools import Extension, setup

SPEEDUPS = [("cdc.sources.mysql._crows", "cdc/sources/mysql/_crows.c")]
setup(ext_modules=[Extension(name, [path], optional=True) for name, path in SPEEDUPS])
