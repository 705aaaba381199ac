"""`prunelab prune-vocab MODEL --task T | --corpus FILE... --out DIR`: keep only the tokens the text uses."""

from __future__ import annotations

from .options import TASK_HELP, add_model, add_out


def register(sub) -> None:
    p = sub.add_parser("prune-vocab", help="keep only the tokens a task's or a corpus's text uses: smaller word "
                                           "embeddings and a re-indexed tokenizer")
    add_model(p)
    p.add_argument("--task", help="keep the tokens of this task's training text; " + TASK_HELP)
    p.add_argument("--data-dir", help="GLUE data directory for --task (default: the hub)")
    p.add_argument("--corpus", nargs="+", metavar="FILE", help="keep the tokens of these text files (one text a line)")
    p.add_argument("--min-count", type=int, default=1, help="keep a token the text uses at least N times (default 1)")
    add_out(p)
    p.set_defaults(run=run)


def summary(info: dict, out: str) -> list[str]:
    lines = [f"{info['source']} -> {out}: vocabulary {info['vocab_before']:,} -> {info['vocab_after']:,} tokens "
             f"({info['kept_used']:,} used at least {info['min_count']} time(s) in {info['texts']:,} texts, "
             f"{info['kept_special']} special, {info['kept_below_padding'] + info['kept_for_tokenizer']} that the "
             f"{info['tokenizer_kind']} tokenizer needs); parameters {info['parameter_bytes_before']:,} -> "
             f"{info['parameter_bytes_after']:,} bytes ({info['parameter_bytes_after'] / info['parameter_bytes_before']:.3f}x)"]
    if info["file_bytes_before"] and info["file_bytes_after"]:
        lines.append(f"model file {info['file_bytes_before']:,} -> {info['file_bytes_after']:,} bytes "
                     f"({info['file_bytes_after'] / info['file_bytes_before']:.3f}x)")
    checked = info["tokenization_checked"]["texts"]
    diff = info["max_abs_diff"]
    lines.append(f"checked: {checked:,} texts of kept tokens tokenize as before"
                 + (f"; outputs on them: hidden states equal, first output max abs difference {diff:.2e}"
                    if diff is not None else ""))
    for split, d in (info["dev"] or {}).items():
        lines.append(f"{split}: {d['removed_tokens']:,} of {d['tokens']:,} tokens ({d['removed_tokens'] / max(d['tokens'], 1):.2%}) "
                     f"have a removed id, in {d['examples_affected']:,} of {d['examples']:,} examples; unknown tokens "
                     f"{d['unk_before']:,} -> {d['unk_after']:,}")
    return lines


def run(args) -> int:
    from ..deploy.vocab import prune_vocab

    info = prune_vocab(args.model, args.out, task=args.task, data_dir=args.data_dir, corpus=args.corpus,
                       min_count=args.min_count, overwrite=args.overwrite)
    print("\n".join(summary(info, args.out)))
    return 0
