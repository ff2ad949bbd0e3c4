"""protlm: protein language models (ESM-1b, ESM-2, ProtT5, CARP), exact, fast and safe.

The public API; the layout of the package is described in docs/architecture.md.
"""

from protlm.version import __version__
from protlm.alphabet import Alphabet, BatchConverter, InvalidSequenceError
from protlm.data.masking import mask_tokens
from protlm.models import ESM, ESM1b, ESM2, ESMConfig, build_model
from protlm import pretrained  # fair-esm style: protlm.pretrained.esm2_t33_650M_UR50D()

__all__ = [
    "__version__", "Alphabet", "BatchConverter", "InvalidSequenceError",
    "ESM", "ESM1b", "ESM2", "ESMConfig", "build_model", "load_model_and_alphabet", "mask_tokens", "pretrained",
]


def load_model_and_alphabet(name_or_path, device=None, dtype=None):
    """(model in eval mode, alphabet) from a published name, a fair-esm .pt, an HF folder or a
    protlm folder (protlm.pretrained.load), on `device`.

    `dtype` (None: fp32 as loaded): an inference precision, fp32 | bf16 | fp16 | int8 | auto
    (protlm.runtime.precision; int8 weights are cached after the first quantization).
    """
    from protlm.dtypes import canonical
    from protlm.pretrained.load import load_model
    from protlm.runtime.options import InferenceOptions
    from protlm.runtime.precision import prepare_model

    if dtype is not None and canonical(dtype) == "auto":  # measured, with this model's accuracy checked
        dtype = InferenceOptions(model=str(name_or_path), device=str(device or "cpu"), dtype=dtype).resolved().dtype
    model = load_model(name_or_path)
    if dtype is not None:
        model = prepare_model(model, str(device or "cpu"), dtype, source=str(name_or_path))
    elif device is not None:
        model = model.to(device)
    return model.eval(), model.alphabet
