"""The stub librkllmrt built with gcc for the tests."""
