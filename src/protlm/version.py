"""The package version (a module of its own, so any layer can record it without importing the
public API in protlm/__init__.py, which sits above every layer)."""

__version__ = "0.1.0"
