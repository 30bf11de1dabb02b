"""The mule companion: the agent on a person's phone that learns, carries and shares snapshots."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mlmule")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
