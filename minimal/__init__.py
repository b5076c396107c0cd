"""minimal: real-time autoregressive generation, from scratch.

One technique per file; import what you need, e.g. `from minimal.transformer import GPT`.
Importing the package has no side effects and loads no weights.
"""

__version__ = "0.1.0"
