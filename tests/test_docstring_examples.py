"""Every docstring example of the ``torchrl_aepo`` package runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import torchrl_aepo

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(torchrl_aepo.__path__, "torchrl_aepo.")
    if not info.name.endswith("__main__")
)


def test_every_module_is_collected():
    assert "torchrl_aepo.objectives.energy_baselines" in MODULES
    assert len(MODULES) > 30


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
