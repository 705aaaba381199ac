"""`prunelab analyze ANALYSIS ...`: parse the options of one analysis and run ``prunelab.analysis.write_analysis``."""

from __future__ import annotations

import inspect

from ..analysis import ANALYSES, features, write_analysis
from ..analysis.common import parse_sparsity
from ..select import SCOPES
from .options import add_model, add_out, floats
from ..errors import InputError

DEFAULT_SPARSITIES = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9"


def register(sub) -> None:
    p = sub.add_parser("analyze", help="measure what pruning removes; writes CSV, JSON and a PNG figure",
                       description="Measurements of Gordon et al. (2020), 'Compressing BERT', on your own models.")
    p.set_defaults(run=run)
    analyses = p.add_subparsers(dest="analysis", required=True, metavar="ANALYSIS")

    def add(name: str, help: str, models: tuple[str, ...] = ("model",)):
        q = analyses.add_parser(name, help=help, description=help)
        for m in models:
            add_model(q, name=m)
        add_out(q)
        q.add_argument("--no-figure", action="store_true", help="write CSV/JSON only (no matplotlib needed)")
        return q

    def sparsities(q, default: str | None = DEFAULT_SPARSITIES) -> None:
        q.add_argument("--sparsities", default=default, help=f"comma-separated fractions of zeros (default: {default})")

    def text(q) -> None:
        q.add_argument("--text", help="text file, one text per line (default: the sample shipped with prunelab)")
        q.add_argument("--max-texts", type=int, help="use at most this many lines of the text")
        q.add_argument("--batch-size", type=int, default=16)
        q.add_argument("--max-length", type=int, default=128, help="tokens per text (longer texts are truncated)")
        q.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")

    add("weights", "mean and standard deviation of every target matrix [Table 3]")
    q = add("mass", "sum of |w| removed by one-shot magnitude pruning, overall and by kind [Figure 5]")
    sparsities(q)
    q.add_argument("--scope", choices=SCOPES, default="matrix")
    sparsities(add("heads", "fraction of each attention head pruned, min/mean/max over heads [Figure 4 left]"))
    q = add("heatmap", "|w| of a layer's key projection (heads side by side) and of the word embeddings sorted by "
            "subword length [Figure 7]")
    q.add_argument("--layer", type=int, default=0, help="layer of the key projection (default: 0)")
    add("movement", "movement of each weight in its matrix's magnitude order between two checkpoints "
        "[Table 2, Figures 4 right and 6]", models=("before", "after"))
    q = add("mask-diff", "fraction of weights one mask prunes and the other keeps [Figure 3]; A and B are masks files, "
            "pruned artifacts, or models pruned at --sparsity", models=("a", "b"))
    q.add_argument("--sparsity", type=float, help="prune both by magnitude at this fraction of zeros (default: use "
                   "their saved masks)")
    q.add_argument("--scope", choices=SCOPES, default="matrix")
    q = add("similarity", "layer-wise cosine similarity of hidden states to a reference [Figure 2 right]")
    q.add_argument("--reference", help="compare MODEL with this model; without it MODEL is the reference")
    sparsities(q, default=None)
    q.add_argument("--scope", choices=SCOPES, default="matrix")
    text(q)
    q = add("sensitivity", "change in MLM loss or feature similarity when only one layer or kind is pruned")
    q.add_argument("--sparsity", type=float, required=True, help="fraction of zeros each part is pruned to")
    q.add_argument("--by", choices=features.GROUPINGS, default="layer")
    q.add_argument("--metric", choices=features.METRICS, default="auto",
                   help="auto: mlm_loss when the model has a masked-LM head, else similarity")
    q.add_argument("--seed", type=int, default=0, help="seed of the MLM token masking")
    text(q)


def run(args) -> int:
    # Each option above is named as the input of the analysis's writer that it sets.
    names = inspect.signature(ANALYSES[args.analysis]).parameters
    inputs = {name: getattr(args, name) for name in names if hasattr(args, name)}
    if inputs.get("sparsities") is not None:
        inputs["sparsities"] = _sparsities(inputs["sparsities"])
    try:
        written = write_analysis(args.analysis, args.out, figure=not args.no_figure, overwrite=args.overwrite, **inputs)
    except ImportError as err:  # a missing optional dependency is bad input, not a crash
        raise InputError(str(err)) from None
    for line in [*written.messages, *written.files]:
        print(line)
    return 0


def _sparsities(text: str) -> list[float]:
    values = floats(text, "--sparsities")
    if not values:
        raise InputError("--sparsities is empty; pass fractions of zeros, e.g. 0,0.1,0.5")
    return [parse_sparsity(value, "sparsity in --sparsities") for value in values]
