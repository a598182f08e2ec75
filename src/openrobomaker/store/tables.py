"""Imports every table module of the store so that Base.metadata knows the whole schema (for Alembic)."""

import importlib
import pkgutil

import openrobomaker.store as _package

_NOT_TABLES = {"base", "db", "tables", "migrations"}

for _module in pkgutil.iter_modules(_package.__path__):
    if _module.name not in _NOT_TABLES:
        importlib.import_module(f"{_package.__name__}.{_module.name}")
