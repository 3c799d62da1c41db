"""job-watcher: watch Oration jobs until they finish and tell webhooks when they do."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("job-watcher")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
