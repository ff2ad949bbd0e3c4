"""The inference engine: batches of sequences through a model, pooled per record.

Every command that runs a model over many sequences goes through `Engine`: `protlm embed`,
the function heads' embeddings, `contacts predict`, and the variant scorers (`Engine.log_probs`:
LM log-probabilities of masked or plain sequences).

- Embeddings run PACKED (protlm.models.layout): sequences concatenated with no padding, so
  the token budget counts real tokens only. Contacts need the attention maps, which only the
  padded layout makes: a request with contacts runs padded batches (closed before padding
  exceeds `max_padding`), reduced layer by layer inside the model's forward.
- Proteins over the model's limit are cut into overlapping windows (protlm.data.windows) or
  truncated; window outputs are merged per residue (and per residue pair for contacts).
- Pooling (protlm.data.pooling): mean or max over residues (BOS/EOS excluded, as fair-esm),
  BOS, per token; the same functions for either layout. Where residues sit comes from the
  alphabet: ESM <cls> residues <eos>, ProtT5 residues </s> (no BOS, so no 'bos' pooling), CARP
  residues only. Models without a packed forward (`supports_packing` False: T5's relative
  position bias is per token pair, CARP's convolutions would mix neighbours) run padded.
- On a CPU a packed forward is also capped at `cpu_forward_tokens(config)` tokens (a batch of
  `toks_per_batch` then runs as several forwards): its widest activation (tokens x FFN width,
  fp32) stays within glibc's largest mmap threshold, 32 MiB on 64-bit Linux. A larger block is
  mmapped afresh at every allocation and zero-filled page by page on first touch: at 4096 tokens
  that cost ~20% of an int8 ESM-2 150M forward on 2 cores (benchmarks/RESULTS.md, section 10).
  Outputs do not depend on how sequences are grouped (packed layout, per-token int8).
- `compile=True` compiles each transformer layer (protlm.runtime.compile); packed batches are
  padded with one dummy sequence to a multiple of `COMPILE_BUCKET` tokens so a long run builds a
  handful of graphs.
- `forward` returns a `HostBatch` whose host copy may still be in flight (CUDA: pinned memory,
  non-blocking): `HostBatch.records()` waits for it, so a writer thread can do the waiting.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch

from protlm.alphabet import Alphabet, pad_tokens
from protlm.data.batching import budget_batches
from protlm.data.pooling import pool, residue_rows
from protlm.data.windows import merge_1d, merge_2d, window_spans
from protlm.errors import InputError
from protlm.runtime.compile import compile_layers, is_compiled

OUTPUTS = ("mean", "bos", "max", "per_tok", "contacts")
LONG_MODES = ("truncate", "window", "error")
COMPILE_BUCKET = 256  # packed token counts are rounded up to a multiple of this when compiling
CPU_ACTIVATION_BYTES = 32 * 2**20  # glibc's largest mmap threshold on 64-bit (see the module docstring)


def cpu_forward_tokens(config) -> int:
    """The most tokens a packed CPU forward holds: its widest per-token activation (the FFN's,
    or q/k/v fused by the int8 attention), in fp32, within CPU_ACTIVATION_BYTES with a row to
    spare (the int8 kernel appends one), rounded down to a multiple of 256 (ESM-2 150M: 3072)."""
    widest = max(getattr(config, "ffn_embed_dim", 0), 3 * config.embed_dim)
    return max(256, (CPU_ACTIVATION_BYTES // (4 * widest) - 1) // 256 * 256)


@dataclass
class Job:
    """One batch of records, tokenised (on the host) and split into forwards within the budget.

    pieces: (record index in the batch, start, end) per window; forwards: per forward pass, the
    piece indices it runs and its tokens: packed (N,) with `cu_seqlens`, or padded (B, T).
    """

    records: list[int]  # indices into the caller's sequence list
    spans: list[list[tuple[int, int]]]  # per record: the residue spans it is run as
    lengths: list[int]  # residues per record
    pieces: list[tuple[int, int, int]]
    forwards: list[tuple[list[int], torch.Tensor, torch.Tensor | None]] = field(default_factory=list)


@dataclass
class HostBatch:
    """A job's outputs on the host. `records()` waits for the copy and merges windows."""

    job: Job
    want: frozenset[str]
    parts: list[dict]  # per forward: host tensors (see Engine._outputs)
    event: object | None = None  # a CUDA event recorded after the copies

    def records(self) -> list[dict]:
        """Per record: {'mean'|'bos'|'max': (nl, D), 'per_tok': (nl, L, D), 'contacts': (L, L)}."""
        if self.event is not None:
            self.event.synchronize()
        per_piece: list[dict] = [{} for _ in self.job.pieces]
        for (idx, _, _), host in zip(self.job.forwards, self.parts):
            for j, p in enumerate(idx):
                per_piece[p] = {k: v[j] for k, v in host.items()}
        by_rec: list[list[dict]] = [[] for _ in self.job.records]
        for (r, _, _), out in zip(self.job.pieces, per_piece):
            by_rec[r].append(out)
        return [_merge(parts, spans, self.want) for parts, spans in zip(by_rec, self.job.spans)]


def _merge(parts: list[dict], spans, want) -> dict:
    """One record's outputs from its window outputs; a single window passes straight through."""
    if len(parts) == 1:
        return {k: v for k, v in parts[0].items() if k in want}
    L = spans[-1][1]
    # (n, nl, D) pieces averaged over overlaps, then back to (nl, L, D)
    per_tok = merge_1d([p["per_tok"].transpose(0, 1) for p in parts], spans, L).transpose(0, 1)
    # pools over the whole sequence, not means of window pools (BOS: the windows' mean)
    seq_L, n_1 = torch.zeros(L, dtype=torch.long), torch.tensor([L])
    out = {"per_tok": per_tok, **{how: pool(per_tok, seq_L, n_1, how)[:, 0] for how in ("mean", "max")}}
    if "bos" in want:
        out["bos"] = torch.stack([p["bos"] for p in parts]).mean(0)
    if "contacts" in want:
        out["contacts"] = merge_2d([p["contacts"] for p in parts], spans, L)
    return {k: v for k, v in out.items() if k in want}


class Engine:
    """Runs sequences through `model` (eval mode, on its device) in token-budget batches.

    repr_layers: fair-esm numbering (resolved by `model.resolve_layers`); toks_per_batch: real
    tokens per packed forward (padded tokens when contacts are asked for); long: 'truncate' |
    'window' | 'error' for sequences over `window` residues (default the model's limit).
    compile: compile the model's layers in place (see the module docstring).
    forward_tokens: tokens per packed forward; default toks_per_batch, capped on a CPU at
    `cpu_forward_tokens` (see the module docstring).
    """

    def __init__(self, model, alphabet: Alphabet | None = None, repr_layers: Sequence[int] = (-1,), *,
                 toks_per_batch: int = 4096, long: str = "truncate", window: int | None = None,
                 max_padding: float = 0.05, compile: bool = False, packed: bool = True,
                 forward_tokens: int | None = None):
        if long not in LONG_MODES:
            raise InputError(f"long must be one of {LONG_MODES}, got {long!r}")
        if toks_per_batch <= 0:
            raise InputError(f"toks_per_batch must be positive, got {toks_per_batch}")
        self.model, self.alphabet = model, alphabet or model.alphabet
        self.layers = model.resolve_layers(repr_layers)
        self.toks_per_batch, self.long, self.max_padding = toks_per_batch, long, max_padding
        self.window = window or model.config.max_sequence_length
        self.packed = packed and getattr(model, "supports_packing", True)
        self.compile = compile and self.packed
        if self.compile and not is_compiled(model):
            compile_layers(model)
        self.device = next(model.parameters()).device
        if forward_tokens is None:
            on_cpu = self.device.type == "cpu" and self.packed
            forward_tokens = min(toks_per_batch, cpu_forward_tokens(model.config)) if on_cpu else toks_per_batch
        if forward_tokens <= 0:
            raise InputError(f"forward_tokens must be positive, got {forward_tokens}")
        self.forward_tokens = forward_tokens  # packed forwards only: padded ones keep toks_per_batch
        self.compile_s = 0.0  # wall time of forwards that compiled a new graph
        self.compiled_token_counts: set[int] = set()  # packed token counts compiled so far
        self._specials, self._offset = self.alphabet.num_specials, self.alphabet.residue_offset

    # ---- planning: host only, can run ahead of the device ----
    def spans(self, length: int) -> list[tuple[int, int]]:
        """The [start, end) residue spans a sequence of `length` residues is run as."""
        if length <= self.window:
            return [(0, length)]
        if self.long == "window":
            return window_spans(length, self.window)
        if self.long == "truncate":
            return [(0, self.window)]  # fair-esm's extract.py keeps the first 1022 residues
        raise InputError(f"sequence of {length} residues is over the limit of {self.window}")

    def cost(self, length: int) -> int:
        """Tokens a sequence costs (residues + BOS/EOS per window)."""
        return sum(e - s + self._specials for s, e in self.spans(length))

    def _is_packed(self, want) -> bool:
        return self.packed and "contacts" not in want

    def batches(self, lengths: Sequence[int], want) -> list[list[int]]:
        """Record indices grouped into batches, shortest first (packed or padded budget)."""
        costs = [self.cost(n) for n in lengths]
        return budget_batches(costs, self.toks_per_batch, packed=self._is_packed(want),
                              max_padding=None if self._is_packed(want) else self.max_padding)

    def plan(self, seqs: Sequence[str], records: Sequence[int], want) -> Job:
        """Tokenise one batch of records (`seqs[i]` for i in records) into forwards."""
        if "bos" in want and not self.alphabet.prepend_bos:
            raise InputError("this model's tokens have no BOS: use mean or max pooling, not bos")
        spans = [self.spans(len(seqs[i])) for i in records]
        job = Job(list(records), spans, [len(seqs[i]) for i in records],
                  [(r, s, e) for r, sp in enumerate(spans) for s, e in sp])
        enc = [self.alphabet.encode(seqs[records[r]][s:e], f"#{records[r]}", s) for r, s, e in job.pieces]
        # windows of one batch may still overflow a forward: split in order, within the budget
        costs = [len(e) + self._specials for e in enc]
        packed = self._is_packed(want)
        for group in budget_batches(costs, self.forward_tokens if packed else self.toks_per_batch,
                                    packed=packed, order=range(len(enc))):
            job.forwards.append(self._tokens(group, enc, want))
        return job

    def _tokens(self, group: list[int], enc: Sequence[Sequence[int]], want):
        if not self._is_packed(want):
            return group, pad_tokens([enc[p] for p in group], self.alphabet), None
        a = self.alphabet
        toks = [a.cls_idx, *(t for p in group for t in (*enc[p], a.eos_idx, a.cls_idx))][:-1]
        lengths = torch.tensor([len(enc[p]) + 2 for p in group])
        cu = torch.zeros(len(group) + 1, dtype=torch.int32)
        cu[1:] = torch.cumsum(lengths, 0)
        return group, torch.tensor(toks, dtype=torch.long), cu

    # ---- the device work ----
    @torch.no_grad()  # not inference_mode: callers may train on the outputs (bilinear contact head)
    def forward(self, job: Job, want) -> HostBatch:
        """Run a planned job; the returned batch's host copies may still be in flight."""
        want = frozenset(want) | ({"per_tok"} if any(len(s) > 1 for s in job.spans) else set())
        parts = [self._forward_packed(t, cu, want) if cu is not None else self._forward_padded(t, want)
                 for _, t, cu in job.forwards]
        event = None
        if self.device.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return HostBatch(job, want, parts, event)

    def _forward_packed(self, tokens_N: torch.Tensor, cu: torch.Tensor, want) -> dict:
        N, n_B = tokens_N.numel(), torch.diff(cu).long() - 2  # residues per piece, on the host
        starts_B = cu[:-1].long() + 1  # residues sit at 1..n of each piece: BOS 0, EOS n+1
        tokens_N = tokens_N.to(self.device, non_blocking=True)
        cu = cu.to(self.device, non_blocking=True)
        if self.compile:
            tokens_N, cu = self._bucket(tokens_N, cu)
        t0 = time.perf_counter()
        new_shape = self.compile and tokens_N.numel() not in self.compiled_token_counts
        reps = self.model(tokens_N, self.layers, return_logits=False, cu_seqlens=cu)["representations"]
        x_LND = torch.stack([reps[k][:N] for k in self.layers]).float()  # dummy tokens dropped
        if new_shape:
            self.compiled_token_counts.add(tokens_N.numel())
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.compile_s += time.perf_counter() - t0
        return self._outputs(x_LND, starts_B, n_B, starts_B - 1, want)

    def _forward_padded(self, tokens_BT: torch.Tensor, want) -> dict:
        B, T = tokens_BT.shape
        n_B = tokens_BT.ne(self.alphabet.padding_idx).sum(1) - self._specials  # on the host
        rows_B = torch.arange(B) * T
        tokens_BT = tokens_BT.to(self.device, non_blocking=True)
        out = self.model(tokens_BT, repr_layers=self.layers, return_contacts="contacts" in want,
                         return_logits=False)
        x_LND = torch.stack([out["representations"][k].reshape(B * T, -1) for k in self.layers]).float()
        host = self._outputs(x_LND, rows_B + self._offset, n_B, rows_B, want)
        if "contacts" in want:
            c, n = _to_host(out["contacts"].float()), n_B.tolist()
            host["contacts"] = [c[b, : n[b], : n[b]] for b in range(B)]
        return host

    def _outputs(self, x_LND: torch.Tensor, starts_B: torch.Tensor, n_B: torch.Tensor,
                 bos_B: torch.Tensor, want) -> dict:
        """Per-piece host outputs from the kept layers' token rows (nl, tokens, D): sequence b's
        residues are rows starts_B[b] .. + n_B[b] (host tensors), its BOS row bos_B[b]."""
        dev = x_LND.device
        rows_R, seq_R = residue_rows(n_B, starts_B, x_LND.shape[1])
        x_LRD = x_LND[:, rows_R.to(dev, non_blocking=True)]
        seq_R, lengths_B = seq_R.to(dev, non_blocking=True), n_B.to(dev, non_blocking=True)
        out = {how: pool(x_LRD, seq_R, lengths_B, how).transpose(0, 1) for how in ("mean", "max") if how in want}
        if "bos" in want:
            out["bos"] = x_LND[:, bos_B.to(dev, non_blocking=True)].transpose(0, 1)  # (B, nl, D)
        host = {k: _to_host(v) for k, v in out.items()}
        if "per_tok" in want:
            host["per_tok"] = list(_to_host(x_LRD).split(n_B.tolist(), dim=1))  # (nl, n_b, D) each
        return host

    def _bucket(self, tokens_N: torch.Tensor, cu: torch.Tensor):
        """Pad a packed batch with one dummy sequence up to a multiple of COMPILE_BUCKET tokens."""
        N = tokens_N.numel()
        extra = -N % COMPILE_BUCKET
        if extra == 0:
            return tokens_N, cu
        # <cls> tokens: never padding (a packed forward refuses it); the dummy attends only to itself
        dummy = tokens_N.new_full((extra,), self.alphabet.cls_idx)
        return torch.cat([tokens_N, dummy]), torch.cat([cu, cu.new_tensor([N + extra])])

    # ---- log-probabilities (the variant scorers) ----
    @torch.no_grad()
    def log_probs(self, encoded: Sequence[Sequence[int]]) -> Iterator[tuple[list[int], list[torch.Tensor]]]:
        """Yield (indices, log-probs) batch by batch, shortest first: for each encoded residue
        list (alphabet indices, <mask> where a position is masked; BOS/EOS added here), the
        (len + BOS + EOS, V) float32 log-softmax of the LM logits on the host, row 0 BOS.
        Lists must fit the model (the scorers cut their own windows). Packed token-budget
        batches as for embeddings (padded for models without a packed forward)."""
        want = frozenset({"logits"})
        costs = [len(e) + self._specials for e in encoded]
        if any(c > self.window + self._specials for c in costs):
            raise InputError(f"a sequence is over the model's limit of {self.window} residues")
        packed = self._is_packed(want)
        for group in budget_batches(costs, self.forward_tokens if packed else self.toks_per_batch,
                                    packed=packed, max_padding=None if packed else self.max_padding):
            _, tokens, cu = self._tokens(group, encoded, want)
            tokens = tokens.to(self.device, non_blocking=True)
            if cu is None:
                lp = _to_host(torch.log_softmax(self.model(tokens)["logits"].float(), -1))
                yield group, [lp[b, : costs[i]] for b, i in enumerate(group)]
                continue
            N, cu = tokens.numel(), cu.to(self.device, non_blocking=True)
            if self.compile:
                tokens, cu = self._bucket(tokens, cu)
            logits = self.model(tokens, cu_seqlens=cu)["logits"][:N]
            lp = _to_host(torch.log_softmax(logits.float(), -1))
            if self.device.type == "cuda":
                torch.cuda.current_stream().synchronize()  # the copy above is non-blocking
            yield group, list(lp.split([costs[i] for i in group]))

    # ---- whole runs ----
    def run(self, seqs: Sequence[str], want) -> Iterator[tuple[list[int], list[dict]]]:
        """Yield (sequence indices, per-record outputs) batch by batch, shortest first."""
        want = frozenset(want)
        for batch in self.batches([len(s) for s in seqs], want):
            yield batch, self.forward(self.plan(seqs, batch, want), want).records()

    def pooled(self, seqs: Sequence[str], how: str = "mean", progress: bool = False) -> torch.Tensor:
        """(len(seqs), layers, D) float32 pooled vectors ('mean', 'max' or 'bos'), in input order."""
        from tqdm import tqdm

        out = torch.zeros(len(seqs), len(self.layers), self.model.config.embed_dim)
        with tqdm(total=len(seqs), desc="embed", unit="seq", disable=not progress) as bar:
            for batch, recs in self.run(seqs, {how}):
                out[batch] = torch.stack([r[how] for r in recs])
                bar.update(len(batch))
        return out


def _to_host(x: torch.Tensor) -> torch.Tensor:
    """A host copy of a device tensor: pinned and non-blocking on CUDA (wait on an event)."""
    if x.device.type != "cuda":
        return x
    buf = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    return buf.copy_(x, non_blocking=True)
