"""tinygen: the generative-AI stack, from the Transformer to Stable Diffusion, from scratch.

Importing this package is light: heavy optional libraries (transformers, diffusers,
matplotlib, bitsandbytes) load only inside the functions that need them.
"""

from tinygen.errors import TinygenError

__version__ = "0.1.0"
__all__ = ["TinygenError", "__version__"]
