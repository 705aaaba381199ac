"""Losses of knowledge-aware sparse pruning (Xu et al. 2021): a pruned student learns from a dense teacher.

Pure functions on tensors. The student matches the teacher's attention matrices and hidden states on mapped
layers (TinyBERT's uniform mapping) and its softened output distribution; the hard-label task loss can be
mixed in. ``training/distill.py`` runs them inside the HF Trainer while the ``Pruner`` prunes the student.

    loss = w_att * L_att + w_hid * L_hid + w_logits * L_logits + w_hard * L_task
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from ..errors import InputError


@dataclass
class DistillWeights:
    """Weights of the loss terms.

    The defaults (attention 1, hidden 1, logits 1, hard 0) follow the paper, which drops the hard labels:
    the teacher was fine-tuned on them, and its soft targets carry the same signal with less noise. A
    weight of 0 skips the term (and the teacher outputs it needs).

    Attributes:
        attention: Weight of ``attention_loss``.
        hidden: Weight of ``hidden_loss``.
        logits: Weight of ``logits_loss``.
        hard: Weight of the model's own task loss on the gold labels.
    """

    attention: float = 1.0
    hidden: float = 1.0
    logits: float = 1.0
    hard: float = 0.0

    def __post_init__(self) -> None:
        for name in ("attention", "hidden", "logits", "hard"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise InputError(f"--alpha-{name} {value!r} must be a number >= 0 (0 switches the term off)")
        if self.attention == self.hidden == self.logits == self.hard == 0:
            raise InputError("all loss weights are 0; set at least one of --alpha-attention, --alpha-hidden, "
                             "--alpha-logits, --alpha-hard above 0")


@dataclass(kw_only=True)
class DistillSettings:
    """How a student learns from its teacher while pruned: the loss weights (``DistillWeights``), the softmax
    temperature of the logits loss, and the cubic schedule's start and end (fractions of training) and update interval.
    Shared by ``prunelab distill-prune`` and the study's ``[distill]`` section."""

    temperature: float = 1.0
    alpha_attention: float = 1.0
    alpha_hidden: float = 1.0
    alpha_logits: float = 1.0
    alpha_hard: float = 0.0
    prune_start: float = 0.0  # fraction of training before pruning starts (Sanh et al.'s warm-up: scores learn first)
    prune_end: float = 0.7  # fraction of training by which the target sparsity is reached
    prune_every: int = 10

    def weights(self) -> DistillWeights:
        return DistillWeights(self.alpha_attention, self.alpha_hidden, self.alpha_logits, self.alpha_hard)


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """TinyBERT's uniform layer mapping: student layer i -> teacher layer g(i) (both 0-based).

    g(i) = floor((i + 1) * T / S) - 1 for S student and T teacher layers: every (T/S)-th teacher layer,
    the last student layer always on the last teacher layer; the identity when S == T.

    Args:
        student_layers: S, the student's number of transformer layers.
        teacher_layers: T, the teacher's.

    Returns:
        A list of S teacher layer indices, increasing.

    Raises:
        ValueError: S < 1, or the student is deeper than the teacher.
    """
    if student_layers < 1:
        raise InputError(f"the student has {student_layers} layers; it needs at least 1")
    if student_layers > teacher_layers:
        raise InputError(f"the student has {student_layers} layers, the teacher only {teacher_layers}; each student "
                         "layer needs its own teacher layer: use a teacher at least as deep as the student")
    return [(i + 1) * teacher_layers // student_layers - 1 for i in range(student_layers)]


def attention_loss(student_attn, teacher_attn, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between attention probability matrices, summed over the mapped layers.

    Uses the post-softmax probabilities HF models return (``output_attentions=True``, eager attention), not
    TinyBERT's pre-softmax scores. Per layer the mean runs over the valid (batch, head, query, key) entries
    only: a pair counts when both its query and its key are real tokens, so padding never contributes.

    Args:
        student_attn: Sequence of L tensors (batch, heads, seq, seq), the student's mapped layers.
        teacher_attn: Sequence of L tensors of the same shapes, the teacher layers they map to.
        attention_mask: (batch, seq), 1 for tokens and 0 for padding; ``None`` counts every position.

    Returns:
        A scalar tensor (differentiable with respect to `student_attn`).
    """
    _check_lengths(student_attn, teacher_attn, "attention")
    total = student_attn[0].new_zeros(())
    for s, t in zip(student_attn, teacher_attn):
        if s.shape != t.shape:
            raise InputError(f"student attention {tuple(s.shape)} and teacher attention {tuple(t.shape)} differ; "
                             "distilling attention needs the same number of heads")
        squared = (s - t.to(s.dtype)) ** 2
        if attention_mask is None:
            total = total + squared.mean()
        else:
            m = attention_mask.to(s.dtype)
            valid = m[:, None, :, None] * m[:, None, None, :]  # (batch, 1, query, key)
            total = total + (squared * valid).sum() / (valid.sum() * s.shape[1]).clamp(min=1)
    return total


def hidden_loss(student_hidden, teacher_hidden, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """MSE between hidden states, summed over the embeddings output and every mapped layer.

    Per layer the mean runs over the real tokens' (token, feature) entries. No learned projection: the
    hidden sizes must match.

    Args:
        student_hidden: Sequence of L + 1 tensors (batch, seq, hidden): embeddings output, then mapped layers.
        teacher_hidden: Sequence of L + 1 tensors (batch, seq, hidden) the student's map to.
        attention_mask: (batch, seq), 1 for tokens and 0 for padding; ``None`` counts every position.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: the hidden sizes differ, naming both.
    """
    _check_lengths(student_hidden, teacher_hidden, "hidden-state")
    if student_hidden[0].shape[-1] != teacher_hidden[0].shape[-1]:
        raise InputError(f"student hidden size {student_hidden[0].shape[-1]} != teacher hidden size "
                         f"{teacher_hidden[0].shape[-1]}; hidden-state distillation needs equal sizes: use a teacher "
                         "of the student's width or pass --alpha-hidden 0")
    total = student_hidden[0].new_zeros(())
    for s, t in zip(student_hidden, teacher_hidden):
        squared = (s - t.to(s.dtype)) ** 2
        if attention_mask is None:
            total = total + squared.mean()
        else:
            m = attention_mask.to(s.dtype)[:, :, None]
            total = total + (squared * m).sum() / (m.sum() * s.shape[-1]).clamp(min=1)
    return total


def logits_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0,
                regression: bool = False) -> torch.Tensor:
    """Soft cross-entropy with the teacher's predictions.

    Classification: T^2 * KL(softmax(z_t / T) || softmax(z_s / T)), averaged over the batch. The paper's soft
    cross-entropy -sum p_t log p_s equals this KL plus the teacher's entropy, a constant for the student, so
    the gradients are identical; the KL form is 0 when student == teacher. The T^2 factor keeps gradient
    magnitudes comparable across temperatures (Hinton et al. 2015).

    Regression (STS-B, one output): MSE between the two predictions; `temperature` is unused.

    Args:
        student_logits: (batch, num_labels).
        teacher_logits: (batch, num_labels).
        temperature: T > 0.
        regression: Whether the outputs are regression predictions.

    Returns:
        A scalar tensor.
    """
    teacher_logits = teacher_logits.to(student_logits.dtype)
    if regression:
        return F.mse_loss(student_logits, teacher_logits)
    if temperature <= 0:
        raise InputError(f"temperature {temperature} must be > 0")
    student = F.log_softmax(student_logits / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


def distill_terms(student_out, teacher_out, attention_mask: torch.Tensor | None, weights: DistillWeights,
                  temperature: float = 1.0, regression: bool = False) -> dict[str, torch.Tensor]:
    """The distillation terms with a weight above 0, from two models' outputs on the same batch.

    Args:
        student_out: The student's output (``logits``; ``attentions`` and ``hidden_states`` when weighted).
        teacher_out: The teacher's, with ``output_attentions`` / ``output_hidden_states`` as needed.
        attention_mask: (batch, seq) of the batch, or ``None``.
        weights: Which terms to compute.
        temperature: T of ``logits_loss``.
        regression: Whether the task is a regression.

    Returns:
        ``{"attention": ..., "hidden": ..., "logits": ...}`` for the weighted terms: unweighted scalars.
    """
    if weights.attention > 0 and not (student_out.attentions and teacher_out.attentions):
        raise InputError("the models returned no attentions; load them with attn_implementation='eager' "
                         "or pass --alpha-attention 0")
    if weights.hidden > 0 and not (student_out.hidden_states and teacher_out.hidden_states):
        raise InputError("the models returned no hidden states; call them with output_hidden_states=True")
    terms = {}
    if weights.attention > 0 or weights.hidden > 0:
        mapping = layer_map(_num_layers(student_out), _num_layers(teacher_out))
    if weights.attention > 0:
        terms["attention"] = attention_loss(student_out.attentions, [teacher_out.attentions[j] for j in mapping], attention_mask)
    if weights.hidden > 0:
        mapped = [0] + [j + 1 for j in mapping]  # hidden_states[0] is the embeddings output
        terms["hidden"] = hidden_loss(student_out.hidden_states, [teacher_out.hidden_states[j] for j in mapped], attention_mask)
    if weights.logits > 0:
        terms["logits"] = logits_loss(student_out.logits, teacher_out.logits, temperature, regression)
    return terms


def total_loss(terms: dict[str, torch.Tensor], weights: DistillWeights, hard: torch.Tensor | None = None) -> torch.Tensor:
    """w_att * L_att + w_hid * L_hid + w_logits * L_logits + w_hard * `hard` over the terms present."""
    parts = [getattr(weights, name) * value for name, value in terms.items()]
    if weights.hard > 0:
        if hard is None:
            raise InputError("--alpha-hard > 0 needs the task loss; the batch has no labels")
        parts.append(weights.hard * hard)
    return torch.stack(parts).sum()


def _num_layers(out) -> int:
    return len(out.attentions) if out.attentions else len(out.hidden_states) - 1


def _check_lengths(student, teacher, what: str) -> None:
    if len(student) != len(teacher) or not student:
        raise InputError(f"{len(student)} student and {len(teacher)} teacher {what} tensors; map the layers with "
                         "layer_map first (and pass at least one)")
