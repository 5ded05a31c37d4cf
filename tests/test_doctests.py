"""Every docstring example in the package runs (those marked ``+SKIP`` need a real model or data)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest
import torch

import prune


def _modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(prune.__path__, "prune."):
        # metric scripts are loaded by path through `evaluate`; __main__ modules run the CLI on import
        if ".evaluation.metrics." in info.name or info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return names


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, extraglobs={"torch": torch}, report=False)
    assert result.failed == 0, f"{result.failed} failing example(s) in {name}; run python -m doctest -v on it"
