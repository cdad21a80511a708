"""Helpers shared by the tests: import them as ``from tests.helpers.MODULE import NAME``."""
