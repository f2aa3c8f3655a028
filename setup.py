"""Builds the native entropy coder; all other metadata lives in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "zoo._rans",
            sources=["zoo/_rans.c"],
            extra_compile_args=["-O3", "-std=c11"],
        )
    ]
)
