"""The mlmule live demo: `make demo` (python -m mlmule_demo). See docs/demo.md."""
