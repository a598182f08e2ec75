"""Imports every module of the services package so that their operations register themselves."""

import importlib
import pkgutil

import openrobomaker.services as _package

for _module in pkgutil.iter_modules(_package.__path__):
    importlib.import_module(f"{_package.__name__}.{_module.name}")
