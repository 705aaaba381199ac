"""Deployment: what makes a pruned model smaller or faster where it runs, and measures it.

``compressed`` (compressed artifacts: compress, decompress), ``execution`` (sparse kernels where a measurement says
they pay), ``speed`` (honest latency measurement), ``onnx`` (export checked in onnxruntime), ``quantize`` (INT8 by
onnxruntime's dynamic quantization, checked against FP32), ``vocab`` (the vocabulary cut: the tokens a task's text
uses, with ``vocab_tokenizer`` re-indexing the tokenizer), ``ship`` (every form measured alike, the fastest within
a dev-score budget written out; ``ship_report`` its table and figure). Deployment reads artifacts
(``prunelab.artifact``); nothing below it imports it.
"""
