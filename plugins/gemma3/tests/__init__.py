"""A package, so that pytest imports this conftest as tests.conftest, apart from nanovllm's tests/conftest.py."""
