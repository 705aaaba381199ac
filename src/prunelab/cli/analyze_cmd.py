"""`prunelab analyze ANALYSIS ...`: run one analysis of ``prunelab.analysis`` and write its CSV, JSON and PNG."""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

from .. import analysis
from ..analysis import features, plots
from ..artifact import check_out_dir, load_model
from ..config import dumps, versions
from ..select import SCOPES

DEFAULT_SPARSITIES = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"
MODEL_HELP = "model directory, pruned artifact, hub id, or 'minilm' (the packaged MiniLM-L6)"


def register(sub) -> None:
    p = sub.add_parser("analyze", help="measure what pruning removes; writes CSV, JSON and a PNG figure",
                       description="Measurements of Gordon et al. (2020), 'Compressing BERT', on your own models.")
    p.set_defaults(run=run)
    analyses = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")

    def add(name: str, handler, help: str, models: tuple[str, ...] = ("model",)):
        q = analyses.add_parser(name, help=help, description=help)
        for m in models:
            q.add_argument(m, help=MODEL_HELP)
        q.add_argument("--out", required=True, help="output directory (must be absent or empty)")
        q.add_argument("--overwrite", action="store_true", help="write into --out even if it is not empty")
        q.add_argument("--no-figure", action="store_true", help="write CSV/JSON only (no matplotlib needed)")
        q.set_defaults(handler=handler)
        return q

    def sparsities(q, default: str | None = DEFAULT_SPARSITIES) -> None:
        q.add_argument("--sparsities", default=default, help=f"comma-separated fractions of zeros (default: {default})")

    def text(q) -> None:
        q.add_argument("--text", help="text file, one text per line (default: the sample shipped with prunelab)")
        q.add_argument("--max-texts", type=int, help="use at most this many lines of the text")
        q.add_argument("--batch-size", type=int, default=16)
        q.add_argument("--max-length", type=int, default=128, help="tokens per text (longer texts are truncated)")
        q.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")

    add("weights", _weights, "mean and standard deviation of every target matrix [Table 3]")
    q = add("mass", _mass, "sum of |w| removed by one-shot magnitude pruning, overall and by kind [Figure 5]")
    sparsities(q)
    q.add_argument("--scope", choices=SCOPES, default="matrix")
    sparsities(add("heads", _heads, "fraction of each attention head pruned, min/mean/max over heads [Figure 4 left]"))
    q = add("heatmap", _heatmap, "|w| of a layer's key projection (heads side by side) and of the word embeddings "
            "sorted by subword length [Figure 7]")
    q.add_argument("--layer", type=int, default=0, help="layer of the key projection (default: 0)")
    add("movement", _movement, "movement of each weight in its matrix's magnitude order between two checkpoints "
        "[Table 2, Figures 4 right and 6]", models=("before", "after"))
    q = add("mask-diff", _mask_diff, "fraction of weights one mask prunes and the other keeps [Figure 3]; A and B are "
            "masks files, pruned artifacts, or models pruned at --sparsity", models=("a", "b"))
    q.add_argument("--sparsity", type=float, help="prune both by magnitude at this fraction of zeros (default: use "
                   "their saved masks)")
    q.add_argument("--scope", choices=SCOPES, default="matrix")
    q = add("similarity", _similarity, "layer-wise cosine similarity of hidden states to a reference [Figure 2 right]")
    q.add_argument("--reference", help="compare MODEL with this model; without it MODEL is the reference")
    sparsities(q, default=None)
    q.add_argument("--scope", choices=SCOPES, default="matrix")
    text(q)
    q = add("sensitivity", _sensitivity, "change in MLM loss or feature similarity when only one layer or kind is pruned")
    q.add_argument("--sparsity", type=float, required=True, help="fraction of zeros each part is pruned to")
    q.add_argument("--by", choices=features.GROUPINGS, default="layer")
    q.add_argument("--metric", choices=features.METRICS, default="auto",
                   help="auto: mlm_loss when the model has a masked-LM head, else similarity")
    q.add_argument("--seed", type=int, default=0, help="seed of the MLM token masking")
    text(q)


def run(args) -> int:
    out = check_out_dir(args.out, args.overwrite)
    try:
        written = args.handler(args, Path(out))
    except ImportError as err:  # a missing optional dependency is bad input, not a crash
        raise ValueError(str(err)) from None
    for path in written:
        print(path)
    return 0


# -- one handler per analysis: load, call the library, write ----------------------------------------------


def _weights(args, out: Path) -> list[Path]:
    model, _ = load_model(args.model)
    stats = analysis.weight_stats(model)
    by_kind = [{"kind": k, **v} for k, v in stats["by_kind"].items()] + [{"kind": "all", **stats["overall"]}]
    files = [_csv(out / "weights.csv", stats["targets"]), _csv(out / "weights_by_kind.csv", by_kind),
             _json(out / "weights.json", "weights", {"model": args.model}, stats)]
    return files + _figure(args, plots.plot_weight_stats, stats, out / "weights.png", f"Weight statistics of {args.model}")


def _mass(args, out: Path) -> list[Path]:
    model, _ = load_model(args.model)
    mass = analysis.pruned_mass(model, _sparsities(args.sparsities), scope=args.scope)
    files = [_csv(out / "mass.csv", mass["rows"]), _json(out / "mass.json", "mass", {"model": args.model}, mass)]
    return files + _figure(args, plots.plot_mass, mass, out / "mass.png",
                           f"Weight mass pruned by one-shot magnitude pruning: {args.model}")


def _heads(args, out: Path) -> list[Path]:
    model, _ = load_model(args.model)
    heads = analysis.head_pruning(model, _sparsities(args.sparsities))
    files = [_csv(out / "heads.csv", heads["rows"]), _csv(out / "heads_summary.csv", heads["summary"]),
             _json(out / "heads.json", "heads", {"model": args.model}, {"heads": heads["heads"], "summary": heads["summary"]})]
    return files + _figure(args, plots.plot_heads, heads, out / "heads.png", f"Pruning per attention head: {args.model}")


def _heatmap(args, out: Path) -> list[Path]:
    model, tokenizer = load_model(args.model)
    key = analysis.key_heatmap(model, args.layer)
    try:
        embeddings = analysis.embedding_heatmap(model, tokenizer)
    except ValueError as err:  # no usable tokenizer: the key heatmap alone
        embeddings, reason = None, str(err)
    summary = {"key": {k: key[k] for k in ("name", "layer", "heads", "d_head", "head_mean_abs")}}
    files = []
    if embeddings is not None:
        summary["embeddings"] = {"name": embeddings["name"], "by_length": embeddings["by_length"]}
        files.append(_csv(out / "embeddings_by_length.csv", embeddings["by_length"]))
    else:
        print(f"note: skipping the word-embedding heatmap: {reason}")
    files.append(_json(out / "heatmap.json", "heatmap", {"model": args.model, "layer": args.layer}, summary))
    files += _figure(args, plots.plot_key_heatmap, key, out / f"key_layer{args.layer}.png",
                     f"Key-projection |w|, layer {args.layer}, heads side by side: {args.model}")
    if embeddings is not None:
        files += _figure(args, plots.plot_embedding_heatmap, embeddings, out / "embeddings.png",
                         f"Word-embedding |w| by subword length: {args.model}")
    return files


def _movement(args, out: Path) -> list[Path]:
    before, _ = load_model(args.before)
    after, _ = load_model(args.after)
    start = time.perf_counter()
    movement = analysis.sort_order_movement(before, after, name_before=args.before, name_after=args.after)
    seconds = time.perf_counter() - start
    by_kind = [{"kind": k, **v} for k, v in movement["by_kind"].items()] + [{"kind": "all", **movement["overall"]}]
    files = [_csv(out / "movement.csv", movement["targets"]), _csv(out / "movement_by_kind.csv", by_kind),
             _csv(out / "movement_bins.csv", movement["bins"]),
             _json(out / "movement.json", "movement", {"before": args.before, "after": args.after},
                   {**movement, "seconds": seconds})]
    overall = movement["overall"]
    print(f"{overall['numel']:,} weights in {seconds:.1f} s: mean |movement| {overall['mean_abs']:.3f}, "
          f"std {overall['std']:.3f} percentage points")
    return files + _figure(args, plots.plot_movement, movement, out / "movement.png",
                           f"Sort-order movement by |w|: {args.before} -> {args.after}")


def _mask_diff(args, out: Path) -> list[Path]:
    diff = analysis.compare_masks(args.a, args.b, args.sparsity, scope=args.scope)
    by_kind = [{"kind": k, **v} for k, v in diff["by_kind"].items()] + [{"kind": "all", **diff["overall"]}]
    files = [_csv(out / "mask_diff.csv", diff["targets"]), _csv(out / "mask_diff_by_kind.csv", by_kind),
             _json(out / "mask_diff.json", "mask-diff", {"a": args.a, "b": args.b, "sparsity": args.sparsity}, diff)]
    how = f"both pruned at {args.sparsity:.0%}" if args.sparsity is not None else "saved masks"
    return files + _figure(args, plots.plot_mask_diff, diff, out / "mask_diff.png",
                           f"Mask difference, {how}: A = {args.a}, B = {args.b}")


def _similarity(args, out: Path) -> list[Path]:
    sparsities = _sparsities(args.sparsities) if args.sparsities else []
    if args.reference is None and not sparsities:
        raise ValueError("nothing to compare: pass --reference REF to compare MODEL with REF, or --sparsities "
                         "0.1,0.5,... to compare MODEL with itself pruned one-shot at each")
    model, tokenizer = load_model(args.model)
    if args.reference is not None:
        reference, ref_tokenizer = load_model(args.reference)
        analysis.check_same_architecture(reference, model, args.reference, args.model)
        if ref_tokenizer is not None and len(ref_tokenizer) >= len(tokenizer or ()):  # the better vocabulary
            tokenizer = ref_tokenizer
        models, name = {args.model: model}, args.reference
    else:
        reference, models, name = model, {}, args.model
    analysis.check_tokenizer(tokenizer, reference, repr(name))
    texts = analysis.load_texts(args.text, args.max_texts)
    batches = analysis.encode(tokenizer, texts, batch_size=args.batch_size, max_length=args.max_length)
    result = analysis.similarity_curves(reference, batches, sparsities=sparsities, models=models, scope=args.scope,
                                        device=_device(args.device), progress=True, reference_name=name)
    rows = [{"label": c["label"], "sparsity": c["sparsity"], "layer": layer, "mean": m, "std": s}
            for c in result["curves"] for layer, m, s in zip(result["layers"], c["mean"], c["std"])]
    inputs = {"model": args.model, "reference": name, "text": args.text or "packaged sample", "texts": len(texts)}
    files = [_csv(out / "similarity.csv", rows), _json(out / "similarity.json", "similarity", inputs, result)]
    return files + _figure(args, plots.plot_similarity, result, out / "similarity.png",
                           f"Hidden-state similarity to {name} ({len(texts)} texts)")


def _sensitivity(args, out: Path) -> list[Path]:
    model, tokenizer = load_model(args.model)
    texts = analysis.load_texts(args.text, args.max_texts)
    result = analysis.sensitivity(model, tokenizer, texts, args.sparsity, by=args.by, metric=args.metric,
                                  batch_size=args.batch_size, max_length=args.max_length, device=_device(args.device),
                                  progress=True, seed=args.seed)
    inputs = {"model": args.model, "text": args.text or "packaged sample", "texts": len(texts)}
    files = [_csv(out / "sensitivity.csv", result["rows"]), _json(out / "sensitivity.json", "sensitivity", inputs, result)]
    return files + _figure(args, plots.plot_sensitivity, result, out / "sensitivity.png",
                           f"Sensitivity to pruning one {args.by} at a time: {args.model}")


# -- argument helpers and writers -------------------------------------------------------------------------


def _sparsities(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--sparsities {text!r} is not a comma-separated list of fractions, e.g. 0,0.1,0.5") from None
    if not values:
        raise ValueError("--sparsities is empty; pass fractions of zeros, e.g. 0,0.1,0.5")
    for value in values:
        analysis.common.parse_sparsity(value, "sparsity in --sparsities")
    return values


def _device(device: str | None) -> str:
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _figure(args, plot, data, path: Path, title: str) -> list[Path]:
    return [] if args.no_figure else [plot(data, path, title)]


def _atomic_write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def _csv(path: Path, rows: list[dict]) -> Path:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "x".join(map(str, v)) if isinstance(v, (list, tuple)) else v for k, v in row.items()})
    return _atomic_write(path, buffer.getvalue())


def _json(path: Path, name: str, inputs: dict, result: dict) -> Path:
    return _atomic_write(path, dumps({"analysis": name, "inputs": inputs, "versions": versions(), "result": result}))
