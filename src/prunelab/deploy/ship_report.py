"""What ``ship`` writes beside the chosen form: its table (text and ``ship.md``) and ``ship.png``, from the data it
returns (``ship.json``)."""

from __future__ import annotations

from pathlib import Path

from ..io import pyplot, save_figure


def table(result: dict) -> str:
    """The forms as a Markdown table: bytes and ratio to the input, median latency and ratio to the input (PyTorch
    FP32) per batch size, dev score, drop, and which qualifies and is chosen."""
    batches = [str(b) for b in result["batch_sizes"]]
    lines = ["| form | what it is | bytes | x input | " + " | ".join(f"ms b{b} | x FP32" for b in batches)
             + " | score | vs input | chosen |",
             "|---|---|---:|---:|" + "---:|---:|" * len(batches) + "---:|---:|---|"]
    for row in result["forms"]:
        shared = "*" if row["timed_as"] else ""  # the same tensors in memory as the form it is timed as
        latency = " | ".join(f"{_ms(row['latency_ms'][b])}{shared} | {row['latency_ratio'][b]:.2f}x" for b in batches)
        ratio = "—" if row["bytes_ratio"] is None else f"{row['bytes_ratio']:.2f}x"
        chosen = "**chosen**" if row["chosen"] else ("" if row["qualifies"] else f"over {result['max_drop']:g}")
        lines.append(f"| {row['form']} | {row['kind']} | {row['bytes']:,} | {ratio} | {latency} | {row['score']:.2f} | "
                     f"{0.0 - row['drop']:+.2f} | {chosen} |")
    return "\n".join(lines)


def _ms(ms: float) -> str:
    return f"{ms:.1f}" if ms >= 10 else f"{ms:.2f}"


def notes(result: dict) -> list[str]:
    """The lines under the table: shared timings, the forms not tried and why, and the choice."""
    lines = [f"* {row['form']}: the same tensors in memory as {row['timed_as']}, so its latency"
             for row in result["forms"] if row["timed_as"]]
    lines += [f"not tried: {name}: {why}" for name, why in result["skipped"].items()]
    chosen = next(r for r in result["forms"] if r["chosen"])
    first = result["forms"][0]
    b = str(result["choice_batch"])
    if chosen is first:
        why = (f"no other form is faster at batch {b} within {result['max_drop']:g} points of {first['form']}'s "
               f"dev score ({first['score']:.2f})")
    else:
        why = (f"the fastest at batch {b} ({_ms(chosen['latency_ms'][b])} ms, {chosen['latency_ratio'][b]:.2f}x "
               f"{first['form']}) within {result['max_drop']:g} points of {first['form']}'s dev score "
               f"({chosen['score']:.2f} vs {first['score']:.2f})")
    return lines + [f"chosen: {chosen['form']} -> {chosen['file']}: {why}"]


def markdown(result: dict) -> str:
    """``ship.md``: what was measured and how, the table, and the choice."""
    noise = ", ".join(f"{r:.3f}x at batch {b}" for b, r in result["noise_floor"].items())
    return "\n".join([
        f"# Shipping `{result['model']}` ({result['task']})", "",
        f"Dev score: the task's score (0-100, the mean of its official metrics) on its full dev set from "
        f"{result['data_dir']} ({result['dev_examples']} examples), every form scored alike from `input_ids` and "
        f"`attention_mask`. Latency: CPU, {result['threads']} threads, sequence length {result['seq_len']}, median of "
        f"{result['repeats']} rounds, the forms interleaved in a new order each round beside an identical copy of the "
        f"input (its paired ratio, the noise floor: {noise})"
        + (f"; PyTorch forms with sparse execution {result['sparse_execution']}" if result["sparse_execution"] else "")
        + f". Bytes: on disk (the weights file of a model directory, the file of an ONNX graph). Chosen: the fastest "
        f"at batch {result['choice_batch']} within {result['max_drop']:g} points of the input's dev score.", "",
        table(result), "", *(f"- {line}" for line in notes(result)), "", "![latency, bytes and score](ship.png)", ""])


def figure(result: dict, path: Path) -> None:
    """Dev score against latency (at the deciding batch size) and against bytes, one point per form; the chosen one
    starred, the lowest score allowed dashed, the faster-and-better front joined."""
    plt = pyplot("ship's figure")
    rows, b = result["forms"], str(result["choice_batch"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    floor = rows[0]["score"] - result["max_drop"]
    for row in rows:
        for ax, x in ((left, row["latency_ms"][b]), (right, row["bytes"] / 1e6)):
            ax.plot([x], [row["score"]], marker="*" if row["chosen"] else "o", markersize=16 if row["chosen"] else 8,
                    linestyle="none", label=row["form"] + (" (chosen)" if row["chosen"] else ""))
    for ax, key in ((left, lambda r: r["latency_ms"][b]), (right, lambda r: r["bytes"] / 1e6)):
        front = sorted((key(r), r["score"]) for r in rows
                       if not any(key(o) <= key(r) and o["score"] >= r["score"] and (key(o) < key(r) or o["score"] > r["score"])
                                  for o in rows))
        ax.plot(*zip(*front), color="gray", linestyle=":", label="front")
        ax.axhline(floor, color="red", linestyle="--", label=f"lowest score allowed (input - {result['max_drop']:g})")
        ax.grid(alpha=0.3)
    left.set(title=f"Dev score vs. latency (batch {b} x {result['seq_len']})", xlabel="Median latency (ms, CPU)",
             ylabel=f"{result['task']} dev score (0-100)")
    right.set(title="Dev score vs. size on disk", xlabel="MB on disk", ylabel=f"{result['task']} dev score (0-100)")
    left.legend(fontsize=8)
    fig.suptitle(f"Shipping {str(result['model'])[-60:]} ({result['task']}): chosen {result['chosen']}")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)

