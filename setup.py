"""Builds the wheel with the workflow's config schema inside the package.

The schema lives with the workflow (``workflow/schemas/``, where Snakemake users look for
it); ``deeprs check-config`` and every step that reads a config need it too, so the wheel
carries a copy as ``deeprs/resources/config.schema.yaml`` (found by ``deeprs.config``).
Everything else is declared in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SCHEMA = Path("workflow") / "schemas" / "config.schema.yaml"


class BuildPyWithSchema(build_py):
    def run(self) -> None:
        super().run()
        if not self.editable_mode:  # an editable install reads the checkout's schema
            target = Path(self.build_lib) / "deeprs" / "resources" / SCHEMA.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SCHEMA, target)


setup(cmdclass={"build_py": BuildPyWithSchema})
