"""
``spatialvlm ask``: spatial questions about images, answered by a model folder.

Every image is asked every question, directly or through the chain-of-thought coordinator
(``evaluate.reasoning``). Images come from files, or from a rosbag2 bag's image topic
(``--bag BAG --frames 0,-1``: frames by position, negative from the end). Each answer comes
back with the length it states in metres (``core.answers.parse_distance``), or, when it states
none, the reason; an answer without a readable length is never turned into a number. With
``--samples N`` (N > 1) the model samples N answers per question and the readable lengths are
averaged, as the paper does for precise distances.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence


@dataclass
class AskResult:
    """
    One image's answer to one question.

    :ivar image: the image file.
    :ivar question: the question as asked.
    :ivar answer: the first answer text (the answer, with one answer per question).
    :ivar samples: every answer text (one unless sampled).
    :ivar value_m: the mean of the lengths the answers state, in metres; None when none does.
    :ivar n_numeric: how many answers state a length.
    :ivar reason: when ``value_m`` is None, why the first answer gave no length.
    """

    image: str
    question: str
    answer: str
    samples: list[str]
    value_m: float | None
    n_numeric: int
    reason: str | None


def read_image(path: str | Path) -> Any:
    """
    Return an image file as RGB uint8 HxWx3.

    :raises ValueError: when the file is missing or is not an image PIL can read.
    """
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert('RGB'))
    except FileNotFoundError as exc:
        raise ValueError(f'{path}: no such image file') from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f'{path}: not a readable image ({exc})') from exc


def read_bag_frames(path: str | Path, indices: Sequence[int],
                    topic: str | None = None) -> list[tuple[str, Any]]:
    """
    Return chosen images of a bag's image topic as ``(name, RGB uint8 HxWx3)`` pairs.

    :param indices: positions among the topic's images in storage order (0 = first; negative
        count from the end); returned in this order.
    :param topic: a ``sensor_msgs`` Image or CompressedImage topic; None: the colour camera
        topic of the package's episode bags when the bag has it, else the bag's only one.
    :raises ValueError: for an unreadable bag, a missing or ambiguous topic, a position out of
        range, or an image that does not decode.
    """
    from spatialvlm_ros.bags.errors import BagError
    from spatialvlm_ros.bags.imageconv import (
        IMAGE_MSGTYPES,
        ImageConversionError,
        message_to_rgb,
    )
    from spatialvlm_ros.bags.reader import open_bag
    from spatialvlm_ros.bags.topics import TOPICS

    try:
        with open_bag(path) as bag:
            images = sorted(n for n, t in bag.topics.items() if t.msgtype in IMAGE_MSGTYPES)
            if topic is None and TOPICS['rgb'].name in images:
                topic = TOPICS['rgb'].name
            if topic is None and len(images) != 1:
                raise ValueError(f'{path}: {len(images)} image topics {images}; choose one with '
                                 '--image-topic')
            topic = topic or images[0]
            if topic not in images:
                raise ValueError(f'{path}: no image topic {topic!r}; image topics present: '
                                 f'{images or "none"}')
            info = bag.topics[topic]
            count = int(info.count_stored or info.count_metadata or 0)
            positions = [i + count if i < 0 else i for i in indices]
            for given, position in zip(indices, positions, strict=True):
                if not 0 <= position < count:
                    raise ValueError(f'{path}: frame {given} is out of range: {topic} holds '
                                     f'{count} images')
            found: dict[int, Any] = {}
            for position, msg in enumerate(bag.messages([topic])):
                if position in positions:
                    found[position] = message_to_rgb(bag.deserialize(msg.data, msg.msgtype),
                                                     msg.msgtype)
                    if len(found) == len(set(positions)):
                        break  # the rest is never decoded
    except BagError as exc:
        raise ValueError(str(exc)) from exc  # it names the bag
    except ImageConversionError as exc:
        raise ValueError(f'{path}: {topic}: {exc}') from exc
    if len(found) < len(set(positions)):
        raise ValueError(f'{path}: {topic} holds fewer images than its metadata says')
    return [(f'{path}[{topic} #{position}]', found[position]) for position in positions]


def _frames(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(',') if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f'frames are comma-separated integers, got {text!r}') \
            from None


def ask(answerer: Any, images: Sequence[tuple[str, Any]], questions: Sequence[str],
        samples: int = 1, temperature: float = 0.7, seed: int = 0) -> list[AskResult]:
    """
    Ask every image every question (image-major order).

    :param answerer: ``answer_batch(images, questions, num_samples, temperature, seed)``, as
        ``evaluate.runner.load_answerer`` or a coordinator returns.
    :param images: ``(name, RGB uint8 HxWx3)`` pairs.
    :param samples: answers per question; 1 asks once with the answerer's decoding.
    """
    from spatialvlm_ros.core.answers import parse_distance
    from spatialvlm_ros.evaluate.metrics import mean_of_samples

    if not images or not questions:
        raise ValueError('give at least one image and one question')
    if any(not str(question).strip() for question in questions):
        raise ValueError('a question is empty')
    if samples < 1:
        raise ValueError(f'samples must be >= 1, got {samples}')
    pairs = [(name, image, question) for name, image in images for question in questions]
    replies = answerer.answer_batch([image for _, image, _ in pairs],
                                    [question for _, _, question in pairs],
                                    samples if samples > 1 else 0, temperature, seed)
    out = []
    for (name, _, question), texts in zip(pairs, replies, strict=True):
        value, numeric = mean_of_samples(texts)  # as eval averages sampled answers
        out.append(AskResult(name, question, texts[0], list(texts), value, numeric,
                             None if numeric else parse_distance(texts[0]).reason))
    return out


def register(subparsers: Any) -> None:
    """Add the ``ask`` command."""
    from spatialvlm_ros.core.decoding import NUMBER_DECODINGS
    from spatialvlm_ros.evaluate.reasoning import REASONINGS
    from spatialvlm_ros.model.estimator import DEFAULT_NUMBER_DECODING

    parser = subparsers.add_parser(
        'ask', help='ask a model spatial questions about image files',
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('images', metavar='IMAGE', nargs='*', help='image files (PNG, JPEG...)')
    parser.add_argument('--bag', help='also ask frames of this rosbag2 bag (sqlite3 or mcap)')
    parser.add_argument('--image-topic',
                        help="the bag's Image / CompressedImage topic (default: "
                             '/camera/color/image_raw when present, else its only one)')
    parser.add_argument('--frames', type=_frames, default=[0],
                        help='positions of the bag frames asked, comma-separated, negative from '
                             'the end (default 0: the first; "0,-1": the first and the last)')
    parser.add_argument('-q', '--question', action='append', required=True, dest='questions',
                        help='a question; repeat for several (every image is asked each)')
    parser.add_argument('--model', help='local model folder (default: the shipped model)')
    parser.add_argument('--reasoning', choices=REASONINGS, default='direct',
                        help='direct (default), or through the chain-of-thought coordinator: '
                             'decompose (size and height comparisons, the vertical distance), '
                             'decompose_grounded (also left / right / front / behind and the '
                             "offsets, from the model's grounding head; the shipped model)")
    parser.add_argument('--decoding', choices=NUMBER_DECODINGS, default=DEFAULT_NUMBER_DECODING,
                        help=f'one answer per question: {" or ".join(NUMBER_DECODINGS)} '
                             f'(default {DEFAULT_NUMBER_DECODING}, which needs a tokenizer that '
                             'spells digits one by one; use greedy for other VLMs)')
    parser.add_argument('--samples', type=int, default=1,
                        help='sampled answers per question, their lengths averaged (default 1)')
    parser.add_argument('--temperature', type=float, default=0.7,
                        help='sampling temperature (default 0.7)')
    parser.add_argument('--seed', type=int, default=0, help='sampling seed (default 0)')
    parser.add_argument('--max-new-tokens', type=int, default=48, help='answer length limit')
    parser.add_argument('--device', default='auto', help="'auto', 'cpu' or 'cuda[:N]'")
    parser.add_argument('--json', action='store_true', help='print JSON')
    parser.set_defaults(func=_ask)


def _ask(args: argparse.Namespace) -> int:
    from spatialvlm_ros.cli import CommandError, print_result
    from spatialvlm_ros.evaluate.reasoning import coordinator_for
    from spatialvlm_ros.evaluate.runner import load_answerer
    from spatialvlm_ros.model.estimator import DEFAULT_MODEL_DIR

    model = Path(args.model) if args.model else DEFAULT_MODEL_DIR
    try:
        if any(not question.strip() for question in args.questions):
            raise ValueError('a question is empty')
        images = [(name, read_image(name)) for name in args.images]  # all read before loading
        if args.bag:
            images += read_bag_frames(args.bag, args.frames, args.image_topic)
        elif args.image_topic:
            raise ValueError('--image-topic names a topic of --bag, which is not given')
        if not images:
            raise ValueError('give image files or --bag')
        if not model.is_dir():
            raise ValueError(f'{model}: no such model folder')
        answerer = load_answerer(model, args.max_new_tokens, args.device, args.decoding)
        if args.reasoning != 'direct':
            answerer = coordinator_for(answerer, args.reasoning)
        results = ask(answerer, images, args.questions, args.samples, args.temperature,
                      args.seed)
    except (ValueError, OSError) as exc:
        raise CommandError(str(exc)) from exc
    lines = []
    for result in results:
        value = (f'{result.value_m:.3f} m' if result.value_m is not None
                 else f'no length ({result.reason})')
        lines.append(f'{result.image}: {result.question}\n  {result.answer}  [{value}]')
    print_result([asdict(r) for r in results], args.json, '\n'.join(lines))
    return 0
