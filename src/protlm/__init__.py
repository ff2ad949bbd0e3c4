"""protlm: protein language models (ESM-1b, ESM-2), exact, fast and safe."""

__version__ = "0.1.0"

from protlm.alphabet import Alphabet, BatchConverter, InvalidSequenceError
from protlm.data.masking import mask_tokens
from protlm.models import ESM, ESM1b, ESM2, ESMConfig, build_model
from protlm import pretrained  # fair-esm style: protlm.pretrained.esm2_t33_650M_UR50D()

__all__ = [
    "__version__", "Alphabet", "BatchConverter", "InvalidSequenceError",
    "ESM", "ESM1b", "ESM2", "ESMConfig", "build_model", "load_model_and_alphabet", "mask_tokens", "pretrained",
]


def load_model_and_alphabet(name_or_path, **kwargs):
    """(model, alphabet) from a published name, a fair-esm .pt, a HF folder or a protlm folder."""
    from protlm.pretrained.load import load_model_and_alphabet as _load

    return _load(name_or_path, **kwargs)
