"""The options every inference command shares, declared once: `@inference_options(...)` adds
--model, --device, --dtype, --toks-per-batch, --long, --progress/--no-progress and
--unknown-to-x to a command and hands it one keyword argument, `opts` (InferenceOptions)."""

from __future__ import annotations

import functools

import click

from protlm.dtypes import CHOICES as DTYPE_CHOICES
from protlm.runtime.options import LONG_MODES, InferenceOptions

MODEL_HELP = "published name or checkpoint path"

# --device and --dtype, shared with `protlm serve` (which batches by its own bounds)
device_option = click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
                             help="default: cuda if available, else cpu")
dtype_option = click.option(
    "--dtype", type=click.Choice(DTYPE_CHOICES), default="fp32", show_default=True,
    help="inference precision: fp32 (fair-esm's numbers), bf16, fp16; int8 (CPU: Linear weights int8 per "
    "channel, activations quantized per call, the rest fp32; cached after the first run); auto (the "
    "fastest measured on this CPU, printed)")


def inference_options(model: str = "required", long: bool = True, batch: bool = True,
                      long_help: str = "sequences over the model limit (1022 residues for ESM-1b and ESM-2)"):
    """model: 'required' | 'optional' (the command has a default, e.g. the one a head records) |
    'none' (the command names models its own way); long / batch: offer --long / --toks-per-batch
    (a command without them uses InferenceOptions' defaults and documents its own policy)."""

    def decorate(f):
        @functools.wraps(f)
        def wrapper(*args, device, dtype, progress, unknown_to_x, **kwargs):
            opts = InferenceOptions(
                model=kwargs.pop("model_name", None), device=device, dtype=dtype, progress=progress,
                unknown="X" if unknown_to_x else None,
                **({"toks_per_batch": kwargs.pop("toks_per_batch")} if batch else {}),
                **({"long": kwargs.pop("long")} if long else {}))
            return f(*args, opts=opts, **kwargs)

        options = []
        if model != "none":
            options.append(click.option("--model", "model_name", required=model == "required",
                                        default=None, help=MODEL_HELP if model == "required" else
                                        "override the model recorded in the head"))
        options += [device_option, dtype_option]
        if batch:
            options.append(click.option("--toks-per-batch", type=click.IntRange(min=1), default=4096,
                                        show_default=True, help="tokens per forward pass (real tokens "
                                        "when packed); changes speed and memory, not results"))
        if long:
            options.append(click.option("--long", type=click.Choice(LONG_MODES), default="truncate",
                                        show_default=True, help=long_help))
        options += [
            click.option("--progress/--no-progress", default=True, show_default=True, help="progress bars on stderr"),
            click.option("--unknown-to-x", "unknown_to_x", is_flag=True,
                         help="map characters outside the residue alphabet to X instead of stopping at the "
                         "first one"),
        ]
        for option in reversed(options):
            wrapper = option(wrapper)
        return wrapper

    return decorate
