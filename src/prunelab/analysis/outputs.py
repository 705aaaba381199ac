"""The output bundle of each analysis (CSV tables, a JSON record and PNG figures), written by ``write_analysis``.

``prunelab analyze NAME`` is a thin layer over ``write_analysis(NAME, out, ...)``, so a Python user gets the same
files, with the same names and contents, as the command line. Every file is written atomically (``prunelab.io``),
one at a time: an interrupted analysis leaves some of its files, each one complete.

Example:
    >>> from prunelab.analysis import write_analysis
    >>> written = write_analysis("mass", "out/mass", model="minilm", sparsities=[0, 0.5, 0.9])
    >>> written.files  # [out/mass/mass.csv, out/mass/mass.json, out/mass/mass.png]
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from ..artifact import load_model, resolve_model_path
from ..config import versions
from ..data.texts import load_texts
from ..io import check_output_dir, mark_output, write_json, write_text
from . import figures
from .common import check_same_architecture, check_tokenizer
from .features import encode, sensitivity, similarity_curves
from .masks import compare_masks
from .movement import sort_order_movement
from .weights import DEFAULT_SPARSITIES, embedding_heatmap, head_pruning, key_heatmap, pruned_mass, weight_stats
from ..errors import InputError

logger = logging.getLogger(__name__)


class AnalysisOutput(NamedTuple):
    """What ``write_analysis`` did.

    Attributes:
        files: The files written, in the order they were written.
        messages: Lines for the user: notes on what was skipped, and summaries (the command line prints them).
    """

    files: list[Path]
    messages: list[str]


class _Bundle:
    """Collects the files of one analysis as they are written into `out`, and the messages for the user."""

    def __init__(self, analysis: str, out: Path, figure: bool):
        self.analysis, self.out, self.draw = analysis, out, figure
        self.files: list[Path] = []
        self.messages: list[str] = []

    def _path(self, name: str) -> Path:
        # Created at the first write, not before: bad input found while computing leaves no empty directory behind.
        if not self.out.is_dir():
            self.out.mkdir(parents=True)
            mark_output(self.out)
        return self.out / name

    def csv(self, name: str, rows: list[dict]) -> None:
        """Write `rows` as CSV, the columns in order of first appearance; lists and tuples as ``AxB``."""
        fields = list(dict.fromkeys(key for row in rows for key in row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "x".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in row.items()})
        self.files.append(write_text(self._path(name), buffer.getvalue()))

    def json(self, inputs: dict, result: dict) -> None:
        """Write ``<analysis>.json``: the analysis, its inputs, the package versions, and the result."""
        record = {"analysis": self.analysis, "inputs": inputs, "versions": versions(), "result": result}
        self.files.append(write_json(self._path(f"{self.analysis.replace('-', '_')}.json"), record))

    def figure(self, plot: Callable, data: dict, name: str, title: str) -> None:
        """Draw `data` with `plot` into `name`, unless figures are turned off."""
        if self.draw:
            self.files.append(plot(data, self._path(name), title))

    def note(self, message: str) -> None:
        self.messages.append(message)


def _by_kind(result: dict) -> list[dict]:
    """The rows of ``result["by_kind"]`` with a row ``all`` of ``result["overall"]`` last."""
    return [{"kind": k, **v} for k, v in result["by_kind"].items()] + [{"kind": "all", **result["overall"]}]


def _device(device: str | None) -> str:
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# -- one writer per analysis: load, call the library, write ----------------------------------------------------


def _weights(bundle: _Bundle, *, model: str) -> None:
    """Table 3: mean and standard deviation of every target matrix, and by kind, of `model`."""
    stats = weight_stats(load_model(model)[0])
    bundle.csv("weights.csv", stats["targets"])
    bundle.csv("weights_by_kind.csv", _by_kind(stats))
    bundle.json({"model": model}, stats)
    bundle.figure(figures.plot_weight_stats, stats, "weights.png", f"Weight statistics of {model}")


def _mass(bundle: _Bundle, *, model: str, sparsities: Sequence[float] = DEFAULT_SPARSITIES,
          scope: str = "matrix") -> None:
    """Figure 5: sum of |w| that one-shot magnitude pruning of `model` at each of `sparsities` removes."""
    mass = pruned_mass(load_model(model)[0], list(sparsities), scope=scope)
    bundle.csv("mass.csv", mass["rows"])
    bundle.json({"model": model}, mass)
    bundle.figure(figures.plot_mass, mass, "mass.png", f"Weight mass pruned by one-shot magnitude pruning: {model}")


def _heads(bundle: _Bundle, *, model: str, sparsities: Sequence[float] = DEFAULT_SPARSITIES) -> None:
    """Figure 4 left: the fraction of each attention head of `model` pruned at each of `sparsities`."""
    heads = head_pruning(load_model(model)[0], list(sparsities))
    bundle.csv("heads.csv", heads["rows"])
    bundle.csv("heads_summary.csv", heads["summary"])
    bundle.json({"model": model}, {"heads": heads["heads"], "summary": heads["summary"]})
    bundle.figure(figures.plot_heads, heads, "heads.png", f"Pruning per attention head: {model}")


def _heatmap(bundle: _Bundle, *, model: str, layer: int = 0) -> None:
    """Figure 7: |w| of the key projection of `layer`, and of the word embeddings when `model` has a tokenizer."""
    loaded, tokenizer = load_model(model)
    key = key_heatmap(loaded, layer)
    try:
        embeddings = embedding_heatmap(loaded, tokenizer)
    except ValueError as err:  # no usable tokenizer: the key heatmap alone
        embeddings = None
        bundle.note(f"note: skipping the word-embedding heatmap: {err}")
    summary = {"key": {k: key[k] for k in ("name", "layer", "heads", "d_head", "head_mean_abs")}}
    if embeddings is not None:
        summary["embeddings"] = {"name": embeddings["name"], "by_length": embeddings["by_length"]}
        bundle.csv("embeddings_by_length.csv", embeddings["by_length"])
    bundle.json({"model": model, "layer": layer}, summary)
    bundle.figure(figures.plot_key_heatmap, key, f"key_layer{layer}.png",
                  f"Key-projection |w|, layer {layer}, heads side by side: {model}")
    if embeddings is not None:
        bundle.figure(figures.plot_embedding_heatmap, embeddings, "embeddings.png",
                      f"Word-embedding |w| by subword length: {model}")


def _movement(bundle: _Bundle, *, before: str, after: str) -> None:
    """Table 2, Figures 4 right and 6: movement of each weight in its matrix's magnitude order, `before` -> `after`."""
    models = load_model(before)[0], load_model(after)[0]
    start = time.perf_counter()
    movement = sort_order_movement(*models, name_before=before, name_after=after)
    seconds = time.perf_counter() - start
    bundle.csv("movement.csv", movement["targets"])
    bundle.csv("movement_by_kind.csv", _by_kind(movement))
    bundle.csv("movement_bins.csv", movement["bins"])
    bundle.json({"before": before, "after": after}, {**movement, "seconds": seconds})
    overall = movement["overall"]
    bundle.note(f"{overall['numel']:,} weights in {seconds:.1f} s: mean |movement| {overall['mean_abs']:.3f}, "
                f"std {overall['std']:.3f} percentage points")
    bundle.figure(figures.plot_movement, movement, "movement.png", f"Sort-order movement by |w|: {before} -> {after}")


def _mask_diff(bundle: _Bundle, *, a: str, b: str, sparsity: float | None = None, scope: str = "matrix") -> None:
    """Figure 3: the fraction of weights mask `a` prunes and `b` keeps (masks files, pruned artifacts, or models
    pruned by magnitude at `sparsity`)."""
    diff = compare_masks(a, b, sparsity, scope=scope)
    bundle.csv("mask_diff.csv", diff["targets"])
    bundle.csv("mask_diff_by_kind.csv", _by_kind(diff))
    bundle.json({"a": a, "b": b, "sparsity": sparsity}, diff)
    how = f"both pruned at {sparsity:.0%}" if sparsity is not None else "saved masks"
    bundle.figure(figures.plot_mask_diff, diff, "mask_diff.png", f"Mask difference, {how}: A = {a}, B = {b}")


def _similarity(bundle: _Bundle, *, model: str, reference: str | None = None, sparsities: Sequence[float] | None = None,
                scope: str = "matrix", text: str | None = None, max_texts: int | None = None, batch_size: int = 16,
                max_length: int = 128, device: str | None = None, progress: bool = True) -> None:
    """Figure 2 right: layer-wise cosine similarity of hidden states of `model` to `reference`, or of `model`
    pruned one-shot at each of `sparsities` to `model` itself, on the texts of `text` (default: the packaged sample)."""
    sparsities = list(sparsities or [])
    if reference is None and not sparsities:
        raise InputError("nothing to compare: pass --reference REF to compare MODEL with REF, or --sparsities "
                         "0.1,0.5,... to compare MODEL with itself pruned one-shot at each")
    loaded, tokenizer = load_model(model)
    if reference is not None:
        ref_model, ref_tokenizer = load_model(reference)
        check_same_architecture(ref_model, loaded, reference, model)
        if ref_tokenizer is not None and len(ref_tokenizer) >= len(tokenizer or ()):  # the better vocabulary
            tokenizer = ref_tokenizer
        models, name = {model: loaded}, reference
    else:
        ref_model, models, name = loaded, {}, model
    check_tokenizer(tokenizer, ref_model, repr(name))
    texts = load_texts(text, max_texts)
    batches = encode(tokenizer, texts, batch_size=batch_size, max_length=max_length)
    result = similarity_curves(ref_model, batches, sparsities=sparsities, models=models, scope=scope,
                               device=_device(device), progress=progress, reference_name=name)
    rows = [{"label": c["label"], "sparsity": c["sparsity"], "layer": layer, "mean": m, "std": s}
            for c in result["curves"] for layer, m, s in zip(result["layers"], c["mean"], c["std"])]
    bundle.csv("similarity.csv", rows)
    bundle.json({"model": model, "reference": name, "text": text or "packaged sample", "texts": len(texts)}, result)
    bundle.figure(figures.plot_similarity, result, "similarity.png",
                  f"Hidden-state similarity to {name} ({len(texts)} texts)")


def _sensitivity(bundle: _Bundle, *, model: str, sparsity: float, by: str = "layer", metric: str = "auto",
                 seed: int = 0, text: str | None = None, max_texts: int | None = None, batch_size: int = 16,
                 max_length: int = 128, device: str | None = None, progress: bool = True) -> None:
    """The change in MLM loss or feature similarity of `model` when only one layer or kind (`by`) is pruned to
    `sparsity`, on the texts of `text` (default: the packaged sample); see ``features.sensitivity``."""
    loaded, tokenizer = load_model(model)
    texts = load_texts(text, max_texts)
    result = sensitivity(loaded, tokenizer, texts, sparsity, by=by, metric=metric, batch_size=batch_size,
                         max_length=max_length, device=_device(device), progress=progress, seed=seed)
    bundle.csv("sensitivity.csv", result["rows"])
    bundle.json({"model": model, "text": text or "packaged sample", "texts": len(texts)}, result)
    bundle.figure(figures.plot_sensitivity, result, "sensitivity.png",
                  f"Sensitivity to pruning one {by} at a time: {model}")


ANALYSES: dict[str, Callable[..., None]] = {
    "weights": _weights, "mass": _mass, "heads": _heads, "heatmap": _heatmap, "movement": _movement,
    "mask-diff": _mask_diff, "similarity": _similarity, "sensitivity": _sensitivity,
}
"""Analysis name -> its writer; a writer's keyword arguments are the inputs ``write_analysis`` passes on."""


def write_analysis(name: str, out: str | Path, /, *, figure: bool = True, overwrite: bool = False,
                   **inputs) -> AnalysisOutput:
    """Run analysis `name` and write its files (CSV, ``<name>.json``, PNG) into directory `out`.

    Models are given as ``prunelab.artifact.load_model`` takes them (a directory, pruned artifact, hub id or
    ``minilm``), so that the JSON record names its inputs.

    Args:
        name: A key of ``ANALYSES``: ``weights``, ``mass``, ``heads``, ``heatmap``, ``movement``, ``mask-diff``,
            ``similarity`` or ``sensitivity``.
        out: Output directory; created at the first write.
        figure: Draw the PNG figures (needs matplotlib).
        overwrite: Write into `out` even if it is not empty, when prunelab wrote it (``io.check_output_dir``).
        **inputs: The keyword arguments of the analysis's writer in ``ANALYSES``, e.g. ``model="minilm"``,
            ``sparsities=[0, 0.5]``, ``scope="matrix"`` for ``mass``.

    Returns:
        The files written and the messages for the user (notes and summaries).

    Raises:
        ValueError: an unknown analysis or bad input (as each analysis function raises it).
        FileExistsError: `out` is a file, or a non-empty directory and not `overwrite`.
        TypeError: an input the analysis does not take, or a required one missing.
        ImportError: `figure` and matplotlib is not installed.
    """
    if name not in ANALYSES:
        raise InputError(f"unknown analysis {name!r}; choose from {', '.join(ANALYSES)}")
    paths = [v for value in inputs.values() for v in (value if isinstance(value, (list, tuple)) else [value])
             if isinstance(v, (str, Path))]
    bundle = _Bundle(name, check_output_dir(out, overwrite, inputs=[resolve_model_path(str(v)) for v in paths]), figure)
    ANALYSES[name](bundle, **inputs)
    logger.info("analysis %s wrote %d files to %s", name, len(bundle.files), bundle.out)
    return AnalysisOutput(bundle.files, bundle.messages)
