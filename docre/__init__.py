"""docre: document-level relation extraction with ATLOP-style models and pluggable losses.

Importing this package has no side effects and loads no heavy module; `docre.Predictor` is
imported on first use.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy so that `import docre` stays cheap (no torch import) for scripts that only read configs.
    if name == "Predictor":
        from docre.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'docre' has no attribute {name!r}")
