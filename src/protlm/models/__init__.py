from protlm.models.config import ESMConfig, esm1b_config, esm2_config
from protlm.models.esm import ESM, ESM1b, ESM2, build_model

__all__ = ["ESMConfig", "esm1b_config", "esm2_config", "ESM", "ESM1b", "ESM2", "build_model"]
