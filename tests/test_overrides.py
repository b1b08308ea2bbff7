"""Every method that overrides a framework's (Lightning, torch, jsonargparse, PyYAML...) carries ``@override``.

docs/architecture.md says so; this test makes it true: it imports every ``toolkit`` module and looks, in each class
defined there, for a method also defined by a base class from outside ``toolkit`` without ``__override__`` (the
attribute ``typing_extensions.override`` sets).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import toolkit


def framework_overrides() -> dict[str, bool]:
    """``{module.Class.method: carries @override}`` for every method that overrides a non-toolkit base's."""
    found = {}
    for info in pkgutil.walk_packages(toolkit.__path__, "toolkit."):
        if info.name.endswith("__main__"):
            continue  # runs the CLI on import
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__:
                continue
            for name, attr in vars(cls).items():
                func = attr.fget if isinstance(attr, property) else getattr(attr, "__func__", attr)
                # dunders, and enum's _sunder_ machinery (a StrEnum's class dict holds _generate_next_value_ & co.)
                sunder = name.startswith("_") and name.endswith("_")
                if name.startswith("__") or sunder or not callable(func):
                    continue
                bases = [b for b in cls.__mro__[1:] if name in vars(b) and b is not object]
                if any(not b.__module__.startswith("toolkit") for b in bases):
                    found[f"{cls.__module__}.{cls.__qualname__}.{name}"] = getattr(func, "__override__", False)
    return found


def test_every_framework_hook_carries_override() -> None:
    found = framework_overrides()
    assert (
        "toolkit.data.datamodule.ImageDataModule.setup" in found
        and "toolkit.model.classifier.ImageClassifier.setup" in found
    )
    assert [name for name, marked in found.items() if not marked] == []
