"""Bytes, entropy bound, save time and load time of prunelab's compressed checkpoints on a BERT-base-size model.

The model: ``BertForMaskedLM(BertConfig())``, randomly initialised (seeded), saved with ``save_pretrained`` (the
dense baseline; the decoder is tied to the word embeddings and stored once). For each sparsity, ``prunelab.prune``
magnitude-prunes it (matrix scope, all 73 targets incl. the word embeddings: 108.4M of the checkpoint's 109.5M
weights) into a
pruned artifact, and ``prunelab.deploy.compressed.compress`` turns that into a compressed one (codec zstd). Per sparsity:

* bytes of the pruned checkpoint as: dense safetensors (the artifact's ``model.safetensors``, zeros stored); that
  file through zstd level 9 (one frame over the whole file); torch sparse CSR (every pruned target
  ``w.to_sparse_csr()``, int64 indices, every other tensor dense, one dict through ``torch.save``); prunelab
  lossless (``model.prunelab.safetensors``, codec zstd), each against the dense safetensors bytes, and prunelab
  against the smallest of the others. Decoding is checked bit-identical (tensors and masks).
* the entropy bound of the lossless file, computed PER TENSOR (each pruned target on its own empirical
  statistics; never above the pooled bound) and summed: for a target of n weights with k kept, s = k / n,
  n * H(s) bits for the mask, plus for the kept values k * H(sign, exponent) bits, H the empirical entropy of the
  joint (sign, exponent) symbol over the kept values, plus the mantissa bits as they are (23 per fp32 value).
  Only the pruned targets count as sparse: every other tensor (biases, LayerNorms, position and token-type
  embeddings, the MLM head's transform and bias) counts at its dense bytes in the bound and in prunelab's figure
  alike. prunelab's figure is the whole file, so it also carries the safetensors header (the JSON table with a
  CRC-32 per tensor), which the bound does not. The gap is split into its parts: the bitmasks against
  n * H(s), the values against k * (H(sign, exponent) + mantissa bits), and the dense rest + header against the
  dense rest.
* the bytes of the artifact's ``masks.safetensors`` (packed bits plus the safetensors header) against 1/8 byte per
  pruned-target weight.
* time to save: ``compress`` (artifact directory -> compressed directory; it loads the artifact first) and
  ``write_compressed`` (checkpoint tensors in memory -> file) against ``save_pretrained`` of the dense model; time
  from file to a ready model: ``prunelab.from_pretrained`` of the compressed directory against
  ``transformers.AutoModelForMaskedLM.from_pretrained`` of the dense directory. transformers maps the dense file
  into memory and reads none of its bytes until they are used, so a second dense figure adds one pass over every
  weight (what a first forward pays): the context for a load that decodes. Medians over --repeats (default 3)
  repeats, the variants interleaved within each repeat so machine noise hits them alike; files are in the page
  cache (written just before).

The goals of the issue are printed beside their figures (met / not met): lossless within 1.05x of the entropy
bound at 50% and at 90%; load at most 1.5x the dense ``from_pretrained`` time; ``masks.safetensors`` at most 1/8
byte per weight. Prints one line per figure, ending with the ratio; all in temporary directories, removed after.
Takes ~12 minutes at the defaults on two CPU cores, with a peak of ~7 GB of memory.

    python benchmarks/bench_checkpoint.py [--sparsities 0.5,0.7,0.9,0.95] [--repeats 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import transformers
import zstandard
from safetensors import safe_open
from safetensors.torch import load_file

import prunelab
from prunelab import PruningConfig, load_masks, resolve_targets
from prunelab.artifact import COMPRESSED_FILE
from prunelab.codec import FLOATS, write_compressed
from prunelab.deploy.compressed import checkpoint_masks, compress
from prunelab.masks_io import MASKS_FILE

MB = 1e6
GOAL_BOUND, GOAL_BOUND_AT, GOAL_LOAD = 1.05, (0.5, 0.9), 1.5


def entropy_bits(counts: np.ndarray) -> float:
    """Empirical entropy (bits per symbol) of a histogram."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def binary_entropy(s: float) -> float:
    return 0.0 if s in (0.0, 1.0) else -(s * math.log2(s) + (1 - s) * math.log2(1 - s))


def value_bits(values: torch.Tensor) -> tuple[float, float]:
    """Bits of kept `values` (1-D float): (k * H(sign, exponent), k * mantissa bits)."""
    exp_bits, mant_bits = FLOATS[values.dtype]
    signed = {4: torch.int32, 2: torch.int16}[values.element_size()]
    bits = values.contiguous().view(signed).numpy().astype(np.int64) & ((1 << (8 * values.element_size())) - 1)
    symbols = bits >> mant_bits  # sign and exponent, 1 + exp_bits bits
    k = values.numel()
    return k * entropy_bits(np.bincount(symbols, minlength=1 << (1 + exp_bits))), float(k * mant_bits)


def bit_identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


def median_time(fn, times: list[float]) -> None:
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)


def met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def run_sparsity(sparsity: float, model, targets, dense_dir: Path, root: Path, repeats: int) -> None:
    pct = f"{sparsity:.0%}"
    pruned_dir = root / f"pruned-{pct}"
    prunelab.prune(str(dense_dir), PruningConfig(sparsity=sparsity), pruned_dir)
    state = load_file(str(pruned_dir / "model.safetensors"))
    by_key = checkpoint_masks(model, targets, load_masks(pruned_dir / MASKS_FILE), state)
    n_weights = sum(m.numel() for m in by_key.values())

    # -- bytes: dense, dense + zstd, torch CSR
    dense_bytes = (pruned_dir / "model.safetensors").stat().st_size
    zstd_bytes = len(zstandard.ZstdCompressor(level=9).compress((pruned_dir / "model.safetensors").read_bytes()))
    csr_path = root / "csr.pt"
    torch.save({k: (v.to_sparse_csr() if k in by_key else v) for k, v in state.items()}, csr_path)
    csr_bytes = csr_path.stat().st_size
    csr_path.unlink()

    # -- the entropy bound, per tensor
    mask_bound = sum(m.numel() * binary_entropy(float(m.sum()) / m.numel()) for m in by_key.values()) / 8
    sign_exp_bits = mantissa_bits = 0.0
    for key, mask in by_key.items():
        sign_exp, mantissa = value_bits(state[key][mask])
        sign_exp_bits, mantissa_bits = sign_exp_bits + sign_exp, mantissa_bits + mantissa
    values_bound = (sign_exp_bits + mantissa_bits) / 8
    rest_bytes = sum(v.numel() * v.element_size() for k, v in state.items() if k not in by_key)
    bound = mask_bound + values_bound + rest_bytes

    # -- timings, interleaved: save_pretrained, compress, write_compressed, dense load, prunelab load
    times: dict[str, list[float]] = {name: [] for name in ("save_pretrained", "compress", "write_compressed",
                                                           "from_pretrained", "from_pretrained_read", "prunelab")}
    out = None
    for r in range(repeats):
        saved, out, written = root / f"save-{r}", root / f"compressed-{pct}-{r}", root / f"written-{r}.safetensors"
        median_time(lambda: model.save_pretrained(saved), times["save_pretrained"])
        median_time(lambda: compress(str(pruned_dir), out, codec="zstd"), times["compress"])
        median_time(lambda: write_compressed(state, by_key, written, "zstd"), times["write_compressed"])
        median_time(lambda: transformers.AutoModelForMaskedLM.from_pretrained(str(dense_dir)), times["from_pretrained"])
        median_time(lambda: read_every_weight(transformers.AutoModelForMaskedLM.from_pretrained(str(dense_dir))),
                    times["from_pretrained_read"])
        loaded = []
        median_time(lambda: loaded.append(prunelab.from_pretrained(str(out))), times["prunelab"])
        shutil.rmtree(saved)
        written.unlink()
        if r < repeats - 1:
            shutil.rmtree(out)
            loaded.clear()
    med = {name: statistics.median(t) for name, t in times.items()}

    # -- the compressed file and its parts; decoded bit-identical?
    path = out / COMPRESSED_FILE
    prunelab_bytes = path.stat().st_size
    parts = {"bitmask": 0, "values": 0, "dense": 0}
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            tensor = f.get_tensor(name)
            nbytes = tensor.numel() * tensor.element_size()
            parts[name.rsplit("::", 1)[1] if "::" in name else "dense"] += nbytes
    header = prunelab_bytes - sum(parts.values())
    model_loaded, masks_loaded = loaded[0].model, loaded[0].masks
    loaded_state = model_loaded.state_dict()
    identical = all(bit_identical(loaded_state[k], v) for k, v in state.items()) and \
        all(bit_identical(masks_loaded[t.name], by_key[k]) for t in targets for k in (t.param_name, t.name) if k in by_key)
    del loaded, model_loaded, loaded_state
    shutil.rmtree(out)
    masks_bytes = (pruned_dir / MASKS_FILE).stat().st_size
    with safe_open(str(pruned_dir / MASKS_FILE), framework="pt") as f:
        masks_payload = sum(f.get_tensor(k).numel() for k in f.keys())  # uint8 packed bits
    shutil.rmtree(pruned_dir)

    label = f"{pct}"
    smallest = min((zstd_bytes, "dense safetensors + zstd-9"), (csr_bytes, "torch sparse CSR"))
    print(f"{label} bytes dense safetensors + zstd-9: {zstd_bytes / MB:.1f} MB vs dense safetensors {dense_bytes / MB:.1f} MB -> {zstd_bytes / dense_bytes:.3f}x")
    print(f"{label} bytes torch sparse CSR (torch.save): {csr_bytes / MB:.1f} MB vs dense safetensors {dense_bytes / MB:.1f} MB -> {csr_bytes / dense_bytes:.3f}x")
    print(f"{label} bytes prunelab lossless (zstd; decoded {'bit-identical' if identical else 'NOT BIT-IDENTICAL'}): "
          f"{prunelab_bytes / MB:.1f} MB vs dense safetensors {dense_bytes / MB:.1f} MB -> {prunelab_bytes / dense_bytes:.3f}x")
    print(f"{label} bytes prunelab lossless: {prunelab_bytes / MB:.1f} MB vs smallest other, {smallest[1]}, {smallest[0] / MB:.1f} MB -> {prunelab_bytes / smallest[0]:.3f}x")
    goal = (f" (goal <= {GOAL_BOUND}x: {met(prunelab_bytes / bound <= GOAL_BOUND)})"
            if any(math.isclose(sparsity, g) for g in GOAL_BOUND_AT) else "")
    print(f"{label} entropy bound (per tensor): prunelab lossless {prunelab_bytes / MB:.2f} MB vs bound {bound / MB:.2f} MB -> {prunelab_bytes / bound:.4f}x{goal}")
    print(f"{label} bound part bitmasks: prunelab {parts['bitmask'] / MB:.2f} MB vs n*H(s) {mask_bound / MB:.2f} MB -> {parts['bitmask'] / mask_bound:.4f}x")
    print(f"{label} bound part kept values: prunelab {parts['values'] / MB:.2f} MB vs k*(H(sign,exp) {sign_exp_bits / max(1, sum(int(m.sum()) for m in by_key.values())):.3f} bits + 23) "
          f"{values_bound / MB:.2f} MB -> {parts['values'] / values_bound:.4f}x")
    print(f"{label} bound part dense rest + header: prunelab {(parts['dense'] + header) / MB:.2f} MB (header {header / 1e3:.0f} kB) vs dense rest {rest_bytes / MB:.2f} MB -> {(parts['dense'] + header) / rest_bytes:.4f}x")
    print(f"{label} masks.safetensors: {masks_bytes:,} bytes vs 1/8 byte per weight {n_weights / 8:,.0f} bytes -> {masks_bytes / (n_weights / 8):.5f}x "
          f"(packed bits {masks_payload:,} bytes + header {masks_bytes - masks_payload:,} bytes; goal <= 1x: {met(masks_bytes <= n_weights / 8)})")
    print(f"{label} save: prunelab compress (artifact dir -> compressed dir) {med['compress']:.2f} s vs save_pretrained (dense) {med['save_pretrained']:.2f} s -> {med['compress'] / med['save_pretrained']:.2f}x the time")
    print(f"{label} save: prunelab write_compressed (tensors in memory -> file) {med['write_compressed']:.2f} s vs save_pretrained (dense) {med['save_pretrained']:.2f} s -> {med['write_compressed'] / med['save_pretrained']:.2f}x the time")
    print(f"{label} load to a ready model: prunelab.from_pretrained (compressed) {med['prunelab']:.2f} s vs transformers from_pretrained (dense) {med['from_pretrained']:.2f} s "
          f"-> {med['prunelab'] / med['from_pretrained']:.2f}x the time (goal <= {GOAL_LOAD}x: {met(med['prunelab'] / med['from_pretrained'] <= GOAL_LOAD)})")
    print(f"{label} load to a ready model: prunelab.from_pretrained (compressed) {med['prunelab']:.2f} s vs transformers from_pretrained (dense) "
          f"+ one read of every weight {med['from_pretrained_read']:.2f} s -> {med['prunelab'] / med['from_pretrained_read']:.2f}x the time")
    print(flush=True)


def read_every_weight(model: torch.nn.Module) -> None:
    """Touch every byte of the model's tensors once (the mapped file's pages come into memory)."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.view(torch.uint8).max() if tensor.numel() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsities", default="0.5,0.7,0.9,0.95")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per figure; the median is printed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")

    torch.manual_seed(args.seed)
    model = transformers.BertForMaskedLM(transformers.BertConfig()).eval()
    targets = resolve_targets(model)
    root = Path(tempfile.mkdtemp(prefix="bench_checkpoint-"))
    try:
        dense_dir = root / "dense"
        model.save_pretrained(dense_dir)
        with safe_open(str(dense_dir / "model.safetensors"), framework="pt") as f:
            stored = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
        print(f"setup: BertForMaskedLM(BertConfig()) seed {args.seed}, {stored / 1e6:.1f}M weights in the checkpoint "
              f"(decoder tied, stored once), {len(targets)} pruned targets incl. word embeddings "
              f"({sum(math.prod(t.shape) for t in targets) / 1e6:.1f}M weights), magnitude, matrix scope; "
              f"times: median of {args.repeats} repeats, {torch.get_num_threads()} torch threads; "
              f"entropy bound per tensor", flush=True)
        for sparsity in [float(s) for s in args.sparsities.split(",")]:
            run_sparsity(sparsity, model, targets, dense_dir, root, args.repeats)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
