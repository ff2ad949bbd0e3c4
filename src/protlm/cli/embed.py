"""`protlm embed`: per-record embeddings (and contacts) from a FASTA file."""

from __future__ import annotations

import re

import click

from protlm.cli.options import inference_options
from protlm.embed.plan import INCLUDES


class _MultiValueCommand(click.Command):
    """Lets `--repr-layers 0 32 33 --include mean per_tok` work as in fair-esm's extract.py.

    Click takes one value per option occurrence, so the values following these options are
    rewritten into repeated occurrences before parsing.
    """

    MULTI = {"--repr-layers": re.compile(r"-?\d+$"), "--include": re.compile("|".join(INCLUDES) + "$")}

    def parse_args(self, ctx, args):
        out, current, got = [], None, False
        for a in args:
            if current and self.MULTI[current].match(a):
                out += [current, a]
                got = True
                continue
            if current and not got:
                out.append(current)  # no value followed: click reports the missing value
            current = None
            if a in self.MULTI:
                current, got = a, False
            else:
                out.append(a)
        if current and not got:
            out.append(current)
        return super().parse_args(ctx, out)


@click.command(cls=_MultiValueCommand)
@click.argument("fasta", type=click.Path(exists=True, dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(), help="HDF5 file, or folder for --format pt")
@click.option("--repr-layers", type=int, multiple=True, default=(-1,), show_default=True,
              help="layers to return, several allowed (--repr-layers 0 32 33); negative counts "
              "from the end; 0 = embeddings")
@click.option("--include", type=click.Choice(INCLUDES), multiple=True, default=("mean",),
              show_default=True, help="outputs per record, several allowed (--include mean per_tok)")
@inference_options(long_help="sequences over the model limit (1022 residues for ESM-1b and ESM-2): "
                   "keep the first ones, embed overlapping windows, or stop")
@click.option("--format", "fmt", type=click.Choice(["h5", "pt"]), default="h5", show_default=True)
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile the model (token counts bucketed to multiples of 256, so a run "
              "builds a few graphs; compile time shows in the progress bar); default: on for CUDA, "
              "off on CPU")
@click.option("--overwrite-changed", is_flag=True,
              help="recompute records already in OUTPUT whose sequence changed (default: refuse)")
@click.option("--distributed/--no-distributed", default=None,
              help="run as one rank of a torchrun job: records split among ranks, one shard each, "
              "merged by rank 0 (docs/embed.md); default: on when torchrun's environment is set")
def command(fasta, output, repr_layers, include, opts, fmt, compile_, overwrite_changed, distributed):
    """Embed every record of FASTA; rerunning after an interruption resumes."""
    from protlm.embed.pipeline import EmbedConfig, embed_to_file

    include = tuple(i for i in INCLUDES if i in include)  # one order, so reruns match
    cfg = EmbedConfig(tuple(repr_layers), include, compile=compile_)
    stats = embed_to_file(fasta, output, opts, cfg, fmt=fmt, overwrite_changed=overwrite_changed,
                          distributed=distributed)
    if stats is None:  # a torchrun rank other than 0: rank 0 reports
        return
    for r in stats.get("ranks", []):
        rate = r["residues"] / r["seconds"] if r["seconds"] else 0.0
        click.echo(f"rank {r['rank']}: {r['records']} records, {r['residues']} residues in "
                   f"{r['seconds']:.1f}s ({rate:.0f} residues/s)", err=True)
    changed = f" ({stats['recomputed']} changed, recomputed)" if stats["recomputed"] else ""
    merged = f" (shards merged in {stats['merge_s']:.1f}s)" if "merge_s" in stats else ""
    click.echo(f"{stats['written']} records written{changed}, {stats['skipped']} already in {output}{merged}",
               err=True)
