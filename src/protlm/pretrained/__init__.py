"""Published models, reached as in fair-esm's `esm.pretrained`.

    model, alphabet = protlm.pretrained.esm2_t33_650M_UR50D()     # any name of the registry
    model, alphabet = protlm.pretrained.load_model_and_alphabet_local("esm2_t6_8M_UR50D.pt")
    model, alphabet = protlm.pretrained.load_model_and_alphabet_hub("esm1b_t33_650M_UR50S")

Each returns (fp32 model in eval mode, Alphabet) like `protlm.load_model_and_alphabet`, which
takes names and paths alike (`device=` works here too; an inference `dtype=` is applied by
`protlm.load_model_and_alphabet`, above this layer). The weights come from the cache fair-esm and torch.hub use
(downloaded when missing and a network is there; see protlm.pretrained.download).
"""

from __future__ import annotations

import importlib
from pathlib import Path


def load_model_and_alphabet(name_or_path, **kwargs):
    """A published name or a checkpoint path (see protlm.load_model_and_alphabet)."""
    from protlm.pretrained.load import load_model_and_alphabet as _load

    return _load(name_or_path, **kwargs)


def load_model_and_alphabet_local(model_location, **kwargs):
    """A checkpoint on disk: fair-esm .pt file (regression beside it), HF or protlm folder."""

    from protlm.errors import NotFoundError

    if not Path(model_location).exists():
        raise NotFoundError(f"no such checkpoint: {model_location}")
    return load_model_and_alphabet(model_location, **kwargs)


def _registry():
    # import_module, not `from protlm.pretrained import registry`: that form asks this module's
    # __getattr__ for 'registry' first, which would recurse
    return importlib.import_module("protlm.pretrained.registry")


def load_model_and_alphabet_hub(model_name, **kwargs):
    """A published model by name (cached, else downloaded)."""
    _registry().get(model_name)  # an unknown name: the list of published ones
    return load_model_and_alphabet(model_name, **kwargs)


# `from protlm.pretrained import convert` asks __getattr__ before importing the submodule: a
# submodule's name must not reach the registry (importing it mid-import of another submodule
# would make a circle)
_SUBMODULES = frozenset(p.stem for p in Path(__file__).parent.glob("*.py"))


def __getattr__(name: str):
    if not name.startswith("_") and name not in _SUBMODULES and name in _registry().REGISTRY:
        def load(**kwargs):
            return load_model_and_alphabet_hub(name, **kwargs)

        load.__name__ = load.__qualname__ = name
        load.__doc__ = f"(model, alphabet) of the published {name!r} (fair-esm: esm.pretrained.{name}())."
        return load
    raise AttributeError(f"module 'protlm.pretrained' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_registry().REGISTRY])
