"""
The spatial VLM: tokenizer, compact model, loading of local HF VLM folders, inference API.

- ``tokenizer``: byte-level BPE trained on the engine's text (digits split), chat template.
- ``compact``: the project's compact LLaVA (SigLIP + projector + Llama) and its processor.
- ``loading``: ``load_vlm(folder)`` for llava / qwen2_vl / qwen2_5_vl / paligemma / idefics3 /
  smolvlm folders, per-family input builders, ``unload``.
- ``inference``: ``SpatialVLM(loaded, InferenceConfig).ask(images, questions)``.
- ``fastpath``: its batch-1 LLaVA fast path (cached prompts, numpy image preprocessing, a lean
  greedy KV-cache loop with the same tokens as ``generate()``).

Importing this package does not import torch or transformers.
"""
