from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tiller")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.1.0"
