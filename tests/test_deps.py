"""Declared dependency floors: one place (pyproject.toml), checked at run time, proven by .ci/run."""

from __future__ import annotations

import re
from pathlib import Path

from alignslm.deps import floor_in, version_key

ROOT = Path(__file__).resolve().parents[1]


def test_floor_parsing_and_comparison():
    reqs = ["torch>=2.4,<2.15", "transformers>=4.57", "peft>=0.13", "triton>=3.0; platform_system == 'Linux'",
            "transformers-stream-generator>=9"]
    assert floor_in(reqs, "transformers") == "4.57"
    assert floor_in(reqs, "torch") == "2.4" and floor_in(reqs, "triton") == "3.0"
    assert floor_in(reqs, "numpy") is None
    assert floor_in(reqs[::-1], "transformers") == "4.57"  # not the floor of a package whose name it prefixes
    assert version_key("4.56.2") < version_key("4.57") <= version_key("4.57.0.dev0") < version_key("5.0.0")


def test_ci_proves_the_declared_transformers_floor():
    """.ci/run installs exactly the declared floor and runs the model tests against it."""
    pyproject = (ROOT / "pyproject.toml").read_text()
    floor = re.search(r'"transformers>=([0-9.]+)"', pyproject).group(1)
    ci = (ROOT / ".ci" / "run").read_text()
    assert f'TRANSFORMERS_FLOOR="{floor}' in ci
