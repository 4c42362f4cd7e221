"""ALA, the Asynchronous LLM Advisor: code shared by the four services (bus, config, metrics, service runtime, CLI)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ala")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
