"""
Training of spatial VLMs: config, data mixing, the accelerate loop and the ablations.

Heavy dependencies (torch, transformers, accelerate, peft) are imported by the modules that
need them, when they run; importing this package is cheap.
"""
