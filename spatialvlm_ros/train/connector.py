"""
Centre the compact VLM's projector output so that its language model can see what differs.

A freshly built LLaVA projector maps every patch to nearly the same vector: over the engine's
images its output tokens have a norm of about 1.6, of which about 1.3 is one vector shared by
all of them. The language model normalises each token (RMSNorm) before attending, so what
differs between patches (a red square here rather than there) is a small turn of an almost
fixed direction, and the model does not learn to use it: on the toy 'which of 6 columns is the
red square in' task (``benchmarks/exp_learnability.py``) it stays at chance for every setting
tried in sessions 5 and 6. Subtracting the shared vector (the mean output token over a sample of
training images) from the projector's output bias leaves each token with only what is
particular to its patch, which RMSNorm then scales to full size. With that centring, and with
the tower and the projector kept frozen so that training cannot drift the shared vector back,
the toy task is learnt in 300 steps. It is not enough alone for questions that name one object
among several (``benchmarks/RESULTS.md``, section "Centring the projector"); with a
position-trained connector scaled by :func:`scale_projector` and supervised attention
(``train.grounding``) the named toy is learnt too. Neither works on the engine's images yet, so
the default recipe uses none of it.

Formats: images RGB ``uint8`` ``(H, W, 3)``. ``torch`` is imported inside the functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class CentringStats:
    """
    What :func:`centre_projector` measured (before the change) and did.

    :ivar images: images the mean was taken over.
    :ivar tokens: projector output tokens in that mean.
    :ivar token_norm: mean L2 norm of an output token.
    :ivar mean_norm: L2 norm of the mean output token (the shared part that was removed).
    :ivar spread: mean L2 distance of a token from the mean token (what is kept).
    """

    images: int
    tokens: int
    token_norm: float
    mean_norm: float
    spread: float

    def to_dict(self) -> dict[str, float | int]:
        """Return the fields as a JSON-ready dict."""
        return {'images': self.images, 'tokens': self.tokens, 'token_norm': self.token_norm,
                'mean_norm': self.mean_norm, 'spread': self.spread}


def check_images(images: Sequence[np.ndarray], caller: str) -> list[np.ndarray]:
    """Return ``images`` as RGB ``uint8`` ``(H, W, 3)`` arrays; raise naming the first bad one."""
    from spatialvlm_ros.model.estimator import check_image

    if not len(images):
        raise ValueError(f'{caller} needs at least one image')
    arrays = []
    for index, image in enumerate(images):
        try:
            arrays.append(check_image(image))
        except ValueError as error:
            raise ValueError(f'image {index} must be RGB uint8 (H, W, 3): {error}') from None
    return arrays


def image_tokens(model: Any, processor: Any, images: Sequence[np.ndarray]) -> Any:
    """
    Return the projector's output for one batch of checked images, with the graph kept.

    :return: a tensor ``(len(images), tokens_per_image, hidden)`` on the model's device.
    """
    import torch

    parameter = next(model.parameters())
    pixels = processor.image_processor(list(images), return_tensors='pt')['pixel_values']
    pixels = pixels.to(device=parameter.device, dtype=parameter.dtype)
    features = model.model.get_image_features(pixel_values=pixels)
    features = getattr(features, 'pooler_output', features)
    if isinstance(features, (list, tuple)):
        features = torch.stack(list(features))
    return features.reshape(len(images), -1, features.shape[-1])


def projector_tokens(model: Any, processor: Any, images: Sequence[np.ndarray],
                     batch_size: int = 16) -> Any:
    """
    Return the projector's output tokens for ``images``.

    :param model: a ``LlavaForConditionalGeneration``-like model with
        ``model.get_image_features``.
    :param processor: its processor (the image processor is used).
    :param images: RGB ``uint8`` ``(H, W, 3)`` arrays.
    :return: a float tensor ``(len(images) * tokens_per_image, hidden)``.
    """
    import torch

    if batch_size < 1:
        raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    arrays = check_images(images, 'projector_tokens')
    chunks = []
    with torch.no_grad():
        for start in range(0, len(arrays), batch_size):
            features = image_tokens(model, processor, arrays[start:start + batch_size])
            chunks.append(features.reshape(-1, features.shape[-1]).float().cpu())
    return torch.cat(chunks)


def _last_layer_and_tokens(model: Any, processor: Any, images: Sequence[np.ndarray],
                           batch_size: int, caller: str) -> tuple[Any, Any]:
    """Return the projector's ``linear_2`` and its finite output tokens over ``images``."""
    import torch

    projector = getattr(getattr(model, 'model', None), 'multi_modal_projector', None)
    last = getattr(projector, 'linear_2', None)
    if last is None or getattr(last, 'bias', None) is None:
        raise ValueError(f'{caller} needs a LLaVA projector whose linear_2 has a bias')
    tokens = projector_tokens(model, processor, images, batch_size)
    if not torch.isfinite(tokens).all():
        raise ValueError('the projector output holds NaN or inf; is the model intact?')
    return last, tokens


def centre_projector(model: Any, processor: Any, images: Sequence[np.ndarray],
                     batch_size: int = 16) -> CentringStats:
    """
    Subtract the mean projector output token over ``images`` from the projector's last bias.

    Afterwards the mean output token over the same images is zero (up to float error). The
    model is changed in place; nothing else is.

    :param model: a LLaVA model whose ``model.multi_modal_projector.linear_2`` has a bias.
    :param processor: its processor.
    :param images: RGB ``uint8`` ``(H, W, 3)`` training images (a few dozen suffice).
    :return: the statistics measured before the change.
    """
    import torch

    last, tokens = _last_layer_and_tokens(model, processor, images, batch_size,
                                          'centre_projector')
    mean = tokens.mean(0)
    stats = CentringStats(
        images=len(images), tokens=int(tokens.shape[0]),
        token_norm=float(tokens.norm(dim=-1).mean()), mean_norm=float(mean.norm()),
        spread=float((tokens - mean).norm(dim=-1).mean()))
    with torch.no_grad():
        last.bias -= mean.to(device=last.bias.device, dtype=last.bias.dtype)
    return stats


def scale_projector(model: Any, processor: Any, images: Sequence[np.ndarray], norm: float = 1.0,
                    batch_size: int = 16) -> float:
    """
    Scale the projector's last layer so its output tokens have a mean L2 norm of ``norm``.

    A projector trained on dense targets (``train.grounding.pretrain_connector``) puts out
    tokens of norm 20-30, against about 0.6 for the decoder's word embeddings; at that scale the
    decoder's activations blew up and the named-object toy was not learnt. Scaling the weight
    and the bias of ``linear_2`` by one factor keeps every direction and ratio between tokens.

    :param model: a LLaVA model whose ``model.multi_modal_projector.linear_2`` has a bias.
    :param processor: its processor.
    :param images: RGB ``uint8`` ``(H, W, 3)`` training images (a few dozen suffice).
    :param norm: the wanted mean token norm (> 0).
    :return: the factor applied.
    """
    import torch

    if not (np.isfinite(norm) and norm > 0):
        raise ValueError(f'norm must be positive and finite, got {norm}')
    last, tokens = _last_layer_and_tokens(model, processor, images, batch_size,
                                          'scale_projector')
    current = float(tokens.norm(dim=-1).mean())
    if current <= 0:
        raise ValueError('the projector output is all zeros; nothing to scale')
    factor = norm / current
    with torch.no_grad():
        last.weight.mul_(factor)
        last.bias.mul_(factor)
    return factor
