"""`prunelab compress SRC --out DST` and `prunelab decompress DST --out PLAIN`: pruned checkpoints that are really smaller."""

from __future__ import annotations

from ..codec import CODECS
from ..deploy.compressed import VALUES
from .options import add_model, add_out


def register(sub) -> None:
    p = sub.add_parser("compress", help="store a pruned model as bitmasks plus kept values, entropy-coded "
                                       "(bit-exact, unless --values fp16|bf16: lossy)")
    add_model(p, "source", help="a pruned artifact, or a model directory whose zeros are its masks")
    add_codec(p)
    add_out(p)
    p.set_defaults(run=run_compress)
    q = sub.add_parser("decompress", help="write a compressed artifact back as a plain one that transformers loads")
    add_model(q, "source", help="a directory written by `prunelab compress`")
    add_out(q)
    q.set_defaults(run=run_decompress)


def add_codec(p) -> None:
    p.add_argument("--codec", choices=CODECS, default="zstd", help="entropy coding of the bitmasks and values (default zstd)")
    p.add_argument("--values", choices=list(VALUES), default="lossless",
                   help="lossless (default): the kept values bit-exact; fp16 or bf16: stored in that format, lossy "
                        "(the largest absolute error is reported and recorded in prunelab.json and README.md)")


def run_compress(args) -> int:
    from ..deploy.compressed import compress

    info = compress(args.source, args.out, codec=args.codec, values=args.values, overwrite=args.overwrite)
    print(summary(info, args.out))
    return 0


def summary(info: dict, out: str) -> str:
    size = info["compressed"]
    lossy = "" if size["values"] == "lossless" else f", values {size['values']} (largest absolute error {size['max_abs_error']:.3g})"
    return (f"{size['sparse_tensors']} pruned tensors as bitmasks + values ({size['codec']}{lossy}): "
            f"{size['compressed_bytes']:,} bytes, {size['compressed_bytes'] / size['dense_bytes']:.1%} of the dense checkpoint "
            f"({size['dense_bytes']:,}) -> {out}")


def run_decompress(args) -> int:
    from ..deploy.compressed import decompress

    decompress(args.source, args.out, overwrite=args.overwrite)
    print(f"plain artifact (model.safetensors + masks.safetensors) -> {args.out}")
    return 0
