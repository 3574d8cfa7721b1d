"""csr's CSR algorithm: beam search, sentence trees, calibrated rewards, selection, metrics, evaluation."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("csr")  # pyproject.toml's, the one source; stage keys hash it
except PackageNotFoundError:  # a source tree that was never installed
    import tomllib
    from pathlib import Path

    __version__ = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
