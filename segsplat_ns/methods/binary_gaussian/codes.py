"""Binary-Gaussian's codes as pure integer arithmetic (no nerfstudio imports).

Code layout: each Gaussian holds one 32-bit code. Bit 31 (most significant) is latent channel 0, so level l's
label Class^l = Bin2Dec(f̄^{1:l}) (Eq. 4) is the *prefix* ``code >> (32 - B_l)`` with B_l = D_1 + ... + D_l
(on the unsigned view of the int32). Widths summing to less than 32 leave the low bits zero.

At a click (Sec. 3.6) every Gaussian's level label is compared with the clicked one (:func:`signed_prefix`,
:func:`prefix_scores`); a clicked prefix no Gaussian stores can be replaced by the nearest stored one, level by
level (:class:`PrefixTable`, ours). :func:`prefix_colors` colours labels for the panoptic outputs.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from segsplat_ns.contract import ClickProbe, LatencyProbe

__all__ = [
    "CODE_BITS",
    "PrefixTable",
    "code_prefix",
    "latency_probe",
    "level_slices",
    "pack_codes",
    "prefix_bits",
    "prefix_colors",
    "prefix_scores",
    "signed_prefix",
    "stored_prefixes",
    "to_int32",
    "unpack_codes",
]

CODE_BITS = 32
"""Bits of a stored code (one int32 per Gaussian)."""

def level_slices(widths: Sequence[int]) -> List[Tuple[int, int]]:
    """[start, end) channel range of each level in the concatenated latent."""
    bounds, start = [], 0
    for width in widths:
        bounds.append((start, start + int(width)))
        start += int(width)
    return bounds


def prefix_bits(widths: Sequence[int], level: int) -> int:
    """B_l = D_1 + ... + D_l for a 0-based level index."""
    return int(sum(widths[: level + 1]))


def pack_codes(bits: Tensor) -> Tensor:
    """Bits [..., D] (bool or {0,1}, D <= 32; channel 0 = most significant bit) -> unsigned code, int64 [...]."""
    d = bits.shape[-1]
    if d > CODE_BITS:
        raise ValueError(f"{d} bits do not fit a 32-bit code")
    weights = torch.tensor([1 << (CODE_BITS - 1 - j) for j in range(d)], dtype=torch.int64, device=bits.device)
    return (bits.to(torch.int64) * weights).sum(-1)


def unpack_codes(codes: Tensor, num_bits: int) -> Tensor:
    """Unsigned (int64) or int32 codes [...] -> bits [..., num_bits] as bool (channel 0 = MSB)."""
    unsigned = codes.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.tensor([CODE_BITS - 1 - j for j in range(num_bits)], dtype=torch.int64, device=codes.device)
    return ((unsigned[..., None] >> shifts) & 1).bool()


def to_int32(codes: Tensor) -> Tensor:
    """Unsigned codes in [0, 2^32) -> the same 32 bits as int32 (two's complement)."""
    codes = codes.to(torch.int64)
    return torch.where(codes >= (1 << 31), codes - (1 << 32), codes).to(torch.int32)


def code_prefix(codes: Tensor, num_prefix_bits: int) -> Tensor:
    """Class label at a level: the top ``num_prefix_bits`` bits, ``code >> (32 - B_l)`` on the unsigned view."""
    return (codes.to(torch.int64) & 0xFFFFFFFF) >> (CODE_BITS - num_prefix_bits)


def with_prefix(codes: Tensor, prefixes: Tensor, num_prefix_bits: int) -> Tensor:
    """The inverse of :func:`code_prefix`: unsigned ``codes`` [...] with their top ``num_prefix_bits`` bits replaced
    by ``prefixes`` [...] (broadcast), the finer bits kept; int64."""
    shift = CODE_BITS - num_prefix_bits
    return (prefixes.to(torch.int64) << shift) | (codes.to(torch.int64) & ((1 << shift) - 1))

class PrefixTable:
    """The distinct stored prefixes of one level with their Gaussian counts, for :meth:`lookup`."""

    def __init__(self, codes: Tensor, widths: Sequence[int], level: int) -> None:
        self.widths = tuple(widths)
        self.level = level
        prefixes = code_prefix(codes, prefix_bits(widths, level))
        self.prefixes, self.counts = torch.unique(prefixes, return_counts=True)
        self._stored_bits: Optional[Tensor] = None

    def lookup(self, queries: Tensor) -> Tensor:
        """Each query prefix [K] -> the nearest stored prefix, level by level (ours): among the stored prefixes,
        keep those whose level-1 bits are nearest (Hamming) to the query's, then among those the ones whose
        level-2 bits are nearest, and so on; ties: the prefix held by most Gaussians. A query that is stored
        maps to itself."""
        queries = queries.to(torch.int64).reshape(-1)
        out = queries.clone()
        if self.prefixes.numel() == 0:
            return out
        # the common case, a stored query, costs one binary search (the prefixes are sorted by torch.unique)
        on_device = queries.to(self.prefixes.device)
        index = torch.searchsorted(self.prefixes, on_device).clamp(max=self.prefixes.numel() - 1)
        missing = (self.prefixes[index] != on_device).nonzero().reshape(-1).tolist()
        if not missing:
            return out
        total = prefix_bits(self.widths, self.level)
        if self._stored_bits is None:
            self._stored_bits = unpack_codes(self.prefixes << (CODE_BITS - total), total)
        stored_bits = self._stored_bits
        query_bits = unpack_codes(on_device << (CODE_BITS - total), total)
        for k in missing:
            alive = torch.ones(self.prefixes.numel(), dtype=torch.bool, device=self.prefixes.device)
            for start, end in level_slices(self.widths)[: self.level + 1]:
                distance = (stored_bits[:, start:end] != query_bits[k, start:end]).sum(-1)
                distance = torch.where(alive, distance, torch.full_like(distance, CODE_BITS + 1))
                alive = distance == distance.min()
            counts = torch.where(alive, self.counts, torch.full_like(self.counts, -1))
            out[k] = self.prefixes[int(torch.argmax(counts))]
        return out.to(queries.device)


def stored_prefixes(codes: Tensor, widths: Sequence[int], level: int) -> PrefixTable:
    return PrefixTable(codes, widths, level)


def signed_prefix(codes: Tensor, num_prefix_bits: int) -> Tensor:
    """The level label in int32 (half the bytes of :func:`code_prefix`'s int64): the arithmetic shift of the
    int32 code. Equal for two codes exactly when their top ``num_prefix_bits`` bits are equal."""
    return to_int32(codes) >> (CODE_BITS - num_prefix_bits)


def prefix_scores(prefixes: Tensor, queries: Tensor, num_prefix_bits: int) -> Tensor:
    """True for every Gaussian whose level label (:func:`signed_prefix`, [N]) equals one of the queried unsigned
    prefixes (:func:`code_prefix`, [K]): bool [N], the selection itself.

    The whole per-Gaussian cost of a click (``segsplat bench-latency`` times it against SAGA's float path): one
    int32 compare, no float scores written."""
    queries = queries.to(prefixes.device, torch.int64)
    signed = torch.where(queries >= (1 << (num_prefix_bits - 1)), queries - (1 << num_prefix_bits), queries)
    if signed.numel() == 1:
        return prefixes == int(signed.reshape(()))
    return torch.isin(prefixes, signed.to(torch.int32))

def prefix_colors(prefixes: Tensor, level: int = 0) -> Tensor:
    """A deterministic colour [..., 3] in [0.15, 0.95] per integer label (hashing, so no palette size limit)."""
    h = (prefixes.to(torch.int64) * 2654435761 + (level + 1) * 40503) & 0xFFFFFFFF
    h = (h ^ (h >> 15)) * 2246822519 & 0xFFFFFFFF
    h = h ^ (h >> 13)
    rgb = torch.stack([(h >> 16) & 255, (h >> 8) & 255, h & 255], dim=-1).float() / 255.0
    return 0.15 + 0.8 * rgb


def latency_probe(num: int, generator: torch.Generator) -> LatencyProbe:
    """A click's integer work on ``num`` random codes (on the generator's device): every Gaussian's code drawn
    from 64 x 8 x 4 random codes, (12, 10, 10) bits, clicked at level 2 (22-bit prefixes). "new level": the first
    click at a level (every Gaussian's level label from its int32 code, and the table of distinct stored prefixes
    for the nearest-prefix query); "same level": every later click (nearest stored prefix, then
    :func:`prefix_scores`)."""
    device = generator.device
    widths, level = (12, 10, 10), 1
    bits = prefix_bits(widths, level)
    group_codes = torch.randint(0, 2**32, (64 * 8 * 4,), generator=generator, dtype=torch.int64, device=device)
    picks = torch.randint(group_codes.numel(), (num,), generator=generator, device=device)
    codes = to_int32(group_codes[picks])
    query = code_prefix(codes[:1], bits)

    def new_level():
        prefixes = signed_prefix(codes, bits)
        table = PrefixTable(codes, widths, level)
        return prefix_scores(prefixes, table.lookup(query), bits), prefixes, table

    _, prefixes, table = new_level()

    def same_level():
        return prefix_scores(prefixes, table.lookup(query), bits)

    def answer(rendered: Tensor) -> Tensor:  # prompt_query (binarise, pack, prefix, nearest stored), then scores
        return prefix_scores(prefixes, table.lookup(code_prefix(pack_codes(rendered > 0.5), bits)), bits)

    return LatencyProbe(
        name="Binary-Gaussian: int32 level labels equal to the clicked prefix (level 2 of 3)",
        cases={"new level": new_level, "same level": same_level},
        selected=int(prefix_scores(prefixes, query, bits).sum()),
        bytes_read={"int32 labels": num * 4},
        click=ClickProbe(unpack_codes(codes, sum(widths)).float(), answer),
    )
