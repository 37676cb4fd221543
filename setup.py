"""setup.py exists for the native extension only (csrc/); metadata lives in pyproject.toml."""

from setuptools import setup

setup()
