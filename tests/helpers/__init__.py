"""Builders and launchers shared by the test modules (no tests here)."""
