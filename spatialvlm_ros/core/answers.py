"""
Parse free-text model answers: distances, yes/no and two-way choices.

Everything here is deterministic, pure stdlib, and never turns an answer it cannot read into a
number: an unreadable answer comes back with ``value_m=None`` (distances) or ``None``.

Distance conventions (``parse_distance``):

- **Units**: m / meter(s) / metre(s), cm, mm, km (and their spelled forms), in / inch(es) /
  ``"`` / ``''``, ft / foot / feet / ``'``, yd / yard(s). The bare ``in`` counts as inches only
  when nothing word-like follows it or the next word is one that follows a length (``3 in
  away``, ``2 in.``); ``2 in the box`` is not a length. Quote marks count only when they touch
  the number (``5'3"``).
- **Commas**: a comma followed by exactly three digits, after one to three leading digits that
  are not a lone ``0``, groups thousands (``1,500 mm`` = 1.5 m); any other comma between digits
  is a decimal comma (``1,5 m`` = 1.5 m, ``0,750 m`` = 0.75 m). With both ``.`` and ``,`` the
  later one is the decimal separator (``1.234,5``). A single dot is always decimal
  (``1.500 m`` = 1.5 m).
- **Scientific notation**: ``2.5e-1 m`` and ``5 x 10^-2 m`` (also ``×`` or ``*``, and ``**``
  for ``^``) are one number (0.25 m, 0.05 m), not a mantissa and a stray exponent.
- **Ranges** (``between 2 and 3 feet``, ``2-3 m``, ``2 to 3 meters``, ``2 or 3 feet``) give the
  midpoint; ``range_m`` keeps both ends.
- **Compounds**: a length followed by a smaller unit of the same system is summed
  (``5 feet 3 inches``, ``5'3"``, ``5'3``, ``six foot two``, ``1 m 20 cm``); so is
  ``a foot and a half``.
- **Written-out numbers**: ``two and a half``, ``one hundred and twenty``, ``twenty-five``,
  ``one point five``, ``point five``, ``a dozen``, ``a`` / ``an`` before a spelled unit
  (``a foot``; so 'a meter stick' reads as 1 m), ``half a meter``,
  ``a quarter of a meter``, ``three quarters of a meter``, ``a couple of`` (2) and ``a few``
  (3), the last two flagged ``vague``. Fractions: ``1/2 m``, ``3 1/2 feet``, ``1½ ft``.
- **Bounds** (``less than a meter``, ``at least 2 m``) keep the stated value and set ``bound``
  to ``'upper'`` or ``'lower'``; hedges (``about``, ``roughly``, ...) set ``approximate``.
- **Several lengths**: the first one wins (``5 feet (1.5 m)`` -> 5 feet); ``candidates``
  counts them all.
- **Bare numbers** (no unit anywhere): ``None`` unless ``ParseConfig.default_unit`` is set; even
  then only when the number ends the answer and is not a label (``object 2`` stays ``None``).
- Signs are ignored (lengths are magnitudes); percentages are never lengths.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
import math
import re

UNIT_METRES: dict[str, float] = {'mm': 0.001, 'cm': 0.01, 'm': 1.0, 'km': 1000.0,
                                 'in': 0.0254, 'ft': 0.3048, 'yd': 0.9144}

_UNIT_WORDS: dict[str, str] = {
    'm': 'm', 'meter': 'm', 'meters': 'm', 'metre': 'm', 'metres': 'm', 'mtr': 'm',
    'mtrs': 'm',
    'cm': 'cm', 'cms': 'cm', 'centimeter': 'cm', 'centimeters': 'cm', 'centimetre': 'cm',
    'centimetres': 'cm',
    'mm': 'mm', 'millimeter': 'mm', 'millimeters': 'mm', 'millimetre': 'mm',
    'millimetres': 'mm',
    'km': 'km', 'kilometer': 'km', 'kilometers': 'km', 'kilometre': 'km', 'kilometres': 'km',
    'in': 'in', 'inch': 'in', 'inches': 'in', 'ins': 'in',
    'ft': 'ft', 'foot': 'ft', 'feet': 'ft', 'foots': 'ft',
    'yd': 'yd', 'yds': 'yd', 'yard': 'yd', 'yards': 'yd',
}
_UNIT_PREFIXES = frozenset(word[:i] for word in _UNIT_WORDS for i in range(1, len(word)))


def may_continue_unit(word: str) -> bool:
    """Return whether ``word`` could still grow into (another) unit: 'centim', 'm' ('mm')."""
    return word.lower() in _UNIT_PREFIXES


# abbreviations that are not spelled out: 'a m' or 'a ft' is not "one metre"
_ABBREVIATIONS = frozenset({'m', 'mtr', 'mtrs', 'cm', 'cms', 'mm', 'km', 'in', 'ins', 'ft',
                            'yd', 'yds'})
# words that may follow a bare 'in' used as inches ('3 in away'); anything else: not a unit
_IN_FOLLOWERS = frozenset({
    'apart', 'away', 'tall', 'wide', 'high', 'long', 'deep', 'thick', 'across', 'from', 'of',
    'off', 'up', 'down', 'above', 'below', 'higher', 'lower', 'further', 'farther', 'closer',
    'nearer', 'left', 'right', 'behind', 'vertically', 'horizontally', 'between', 'or', 'to',
    'and', 'in', 'by', 'at', 'wider', 'taller', 'shorter', 'lengthwise',
})
# unit order within a system, largest first: a smaller unit after a larger one is summed
_SYSTEMS: tuple[tuple[str, ...], ...] = (('km', 'm', 'cm', 'mm'), ('yd', 'ft', 'in'))
_FEET_MARKS = frozenset({"'"})
_INCH_MARKS = frozenset({'"'})
# characters replaced one for one before tokenising (spans stay valid)
_CHAR_MAP = str.maketrans({'\u2019': "'", '\u2018': "'", '\u2032': "'", '\u00b4': "'",
                           '\u201c': '"', '\u201d': '"', '\u2033': '"',
                           '\u2013': '-', '\u2014': '-', '\u2212': '-'})

_ONES: dict[str, int] = {
    'zero': 0, 'one': 1, 'two': 2, 'three': 3, 'four': 4, 'five': 5, 'six': 6, 'seven': 7,
    'eight': 8, 'nine': 9,
}
_TEENS: dict[str, int] = {
    'ten': 10, 'eleven': 11, 'twelve': 12, 'thirteen': 13, 'fourteen': 14, 'fifteen': 15,
    'sixteen': 16, 'seventeen': 17, 'eighteen': 18, 'nineteen': 19,
}
_TENS: dict[str, int] = {
    'twenty': 20, 'thirty': 30, 'forty': 40, 'fourty': 40, 'fifty': 50, 'sixty': 60,
    'seventy': 70, 'eighty': 80, 'ninety': 90,
}
_SCALES: dict[str, int] = {'hundred': 100, 'thousand': 1000}
_DENOMINATORS: dict[str, float] = {'half': 2.0, 'halves': 2.0, 'third': 3.0, 'thirds': 3.0,
                                   'quarter': 4.0, 'quarters': 4.0}
_VULGAR: dict[str, float] = {'\u00bd': 0.5, '\u00bc': 0.25, '\u00be': 0.75, '\u2153': 1 / 3,
                             '\u2154': 2 / 3}

_RANGE_WORDS = frozenset({'to', 'or', '-'})
# words just before a lone number that make it a label, not a length ('object 2.')
_LABEL_WORDS = frozenset({'object', 'objects', 'number', 'no', 'item', 'option', 'id', 'image',
                          'figure', 'step', 'box', 'region', 'choice', 'answer', 'label', '#',
                          'frame', 'picture', 'photo', 'version', 'level', 'type'})
# (words before the length, what they mean); longest first
_QUALIFIERS: tuple[tuple[tuple[str, ...], str], ...] = tuple(sorted((
    (('less', 'than'), 'upper'), (('fewer', 'than'), 'upper'), (('under',), 'upper'),
    (('below',), 'upper'), (('at', 'most'), 'upper'), (('no', 'more', 'than'), 'upper'),
    (('not', 'more', 'than'), 'upper'), (('up', 'to'), 'upper'), (('within',), 'upper'),
    (('just', 'under'), 'upper'), (('smaller', 'than'), 'upper'), (('<',), 'upper'),
    (('more', 'than'), 'lower'), (('over',), 'lower'), (('above',), 'lower'),
    (('at', 'least'), 'lower'), (('greater', 'than'), 'lower'), (('no', 'less', 'than'), 'lower'),
    (('not', 'less', 'than'), 'lower'), (('beyond',), 'lower'), (('just', 'over'), 'lower'),
    (('larger', 'than'), 'lower'), (('>',), 'lower'),
    (('about',), 'approx'), (('around',), 'approx'), (('roughly',), 'approx'),
    (('approximately',), 'approx'), (('approx',), 'approx'), (('nearly',), 'approx'),
    (('almost',), 'approx'), (('some',), 'approx'), (('circa',), 'approx'), (('ca',), 'approx'),
    (('close', 'to'), 'approx'), (('~',), 'approx'), (('estimate',), 'approx'),
    (('maybe',), 'approx'), (('perhaps',), 'approx'), (('probably',), 'approx'),
    (('like',), 'approx'), (('or', 'so'), 'approx'),
), key=lambda item: -len(item[0])))

_TOKEN_RE = re.compile(r"""
    (?P<num>(?:\d+(?:[.,]\d+)*|(?<![\w.])\.\d+)
      (?:[eE][+-]?\d+|\s*[x\u00d7*]\s*10\s*(?:\^|\*\*)\s*[+-]?\d+(?![\w.]))?)
  | (?P<vulgar>[\u00bd\u00bc\u00be\u2153\u2154])
  | (?P<word>[^\W\d_]+(?:'[^\W\d_]+)?)
  | (?P<sym>\S)
""", re.VERBOSE)


@dataclass(frozen=True)
class _Token:
    kind: str  # 'num', 'vulgar', 'word' or 'sym'
    text: str  # lower case
    start: int
    end: int


@dataclass(frozen=True)
class _Number:
    value: float
    start: int  # token indices: [start, end)
    end: int
    kind: str  # 'digits', 'words' or 'article' (a lone 'a' / 'an')
    vague: bool = False


@dataclass(frozen=True)
class _Unit:
    unit: str
    end: int  # token index after the unit
    spelled: bool


@dataclass
class ParseConfig:
    """
    Options of ``parse_distance``.

    :ivar default_unit: unit assumed for a bare number that ends an answer with no unit anywhere
        ('2.5.', 'The distance is 3.'); None (default) leaves such answers unparsed.
    :ivar allow_vague: read 'a couple of' as 2 and 'a few' as 3 (flagged ``vague``); when False
        they are unparsed.
    :ivar allow_bounds: read 'less than a meter' as 1 m (flagged ``bound``); when False
        bounded answers are unparsed.
    """

    default_unit: str | None = None
    allow_vague: bool = True
    allow_bounds: bool = True

    def __post_init__(self) -> None:
        if self.default_unit is not None and self.default_unit not in UNIT_METRES:
            raise ValueError(f'default_unit must be one of {sorted(UNIT_METRES)} or None, '
                             f'got {self.default_unit!r}')


@dataclass(frozen=True)
class ParsedDistance:
    """
    A length read from an answer.

    :ivar value_m: metres, or None when the answer holds no readable length.
    :ivar unit: the stated unit ('m', 'cm', 'mm', 'km', 'in', 'ft', 'yd'; the larger one of a
        compound like 5 ft 3 in), or None.
    :ivar text: the matched part of the answer ('' when unparsed).
    :ivar span: ``(start, end)`` character offsets of ``text`` in the answer, or None.
    :ivar reason: why nothing was read ('empty', 'no number', 'number without a unit', ...);
        None when parsed.
    :ivar approximate: a hedge preceded the length ('about', 'roughly').
    :ivar bound: 'upper' for 'less than ...', 'lower' for 'more than ...', else None.
    :ivar range_m: ``(low, high)`` metres when a range was stated (value is the midpoint).
    :ivar vague: the number was 'a couple' / 'a few'.
    :ivar candidates: how many lengths the answer states (the first is returned).
    """

    value_m: float | None
    unit: str | None = None
    text: str = ''
    span: tuple[int, int] | None = None
    reason: str | None = None
    approximate: bool = False
    bound: str | None = None
    range_m: tuple[float, float] | None = None
    vague: bool = False
    candidates: int = 0

    @property
    def ok(self) -> bool:
        """Return whether a length was read."""
        return self.value_m is not None


def _tokenize(text: str) -> list[_Token]:
    tokens = []
    for match in _TOKEN_RE.finditer(text.translate(_CHAR_MAP)):
        kind = match.lastgroup or 'sym'
        tokens.append(_Token(kind, match.group().lower(), match.start(), match.end()))
    return tokens


def parse_number_text(text: str) -> float | None:
    """
    Return the value of a digit string with ``.`` / ``,`` separators, or None if malformed.

    See the module docstring for the comma convention: ``'1,500'`` -> 1500, ``'1,5'`` -> 1.5,
    ``'1.234,5'`` -> 1234.5, ``'1.5'`` -> 1.5, ``'.5'`` -> 0.5.
    """
    power = re.fullmatch(r'(.+?)(?:e|\s*[x\u00d7*]\s*10\s*(?:\^|\*\*)\s*)([+-]?\d+)',
                         text.lower())
    if power:  # '2.5e-1', '5 x 10^-2'
        mantissa = parse_number_text(power.group(1))
        exponent = int(power.group(2))
        if mantissa is None or abs(exponent) > 30:
            return None
        return mantissa * 10.0 ** exponent
    if re.fullmatch(r'\.\d+', text):
        return float(text)  # '.5'
    if not re.fullmatch(r'\d+(?:[.,]\d+)*', text):
        return None
    dots, commas = text.count('.'), text.count(',')
    if dots and commas:
        decimal = '.' if text.rfind('.') > text.rfind(',') else ','
        thousands = ',' if decimal == '.' else '.'
        whole, _, frac = text.rpartition(decimal)
        if decimal in whole or not re.fullmatch(r'\d{1,3}(?:' + re.escape(thousands)
                                                + r'\d{3})*', whole):
            return None
        return float(whole.replace(thousands, '') + '.' + frac)
    if commas:
        if re.fullmatch(r'[1-9]\d{0,2}(?:,\d{3})+', text):
            return float(text.replace(',', ''))
        return float(text.replace(',', '.')) if commas == 1 else None
    if dots > 1:
        if re.fullmatch(r'[1-9]\d{0,2}(?:\.\d{3})+', text):
            return float(text.replace('.', ''))
        return None
    return float(text)


class _Reader:
    """Token-level reader of numbers, units and lengths."""

    def __init__(self, text: str, config: ParseConfig) -> None:
        self.text = text
        self.config = config
        self.tokens = _tokenize(text)

    def word(self, i: int) -> str:
        return self.tokens[i].text if 0 <= i < len(self.tokens) else ''

    def adjacent(self, i: int) -> bool:
        """Whether token ``i`` touches the token before it."""
        return 0 < i < len(self.tokens) and self.tokens[i].start == self.tokens[i - 1].end

    # -- numbers ---------------------------------------------------------------------------

    def number(self, i: int) -> _Number | None:
        if i >= len(self.tokens):
            return None
        token = self.tokens[i]
        if token.kind == 'num':
            return self._digits(i)
        if token.kind == 'vulgar':
            return _Number(_VULGAR[token.text], i, i + 1, 'digits')
        if token.kind == 'word':
            return self._words(i)
        return None

    def _digits(self, i: int) -> _Number | None:
        value = parse_number_text(self.tokens[i].text)
        if value is None:
            return None
        j = i + 1
        integer = value.is_integer() and not any(c in self.tokens[i].text for c in '.e^x*')
        if integer and self.word(j) == '/' and self._is_int(j + 1):
            denominator = float(self.word(j + 1))
            if denominator == 0:
                return None
            return self._half_suffix(_Number(value / denominator, i, j + 2, 'digits'))
        if integer and self._is_int(j) and self.word(j + 1) == '/' and self._is_int(j + 2):
            numerator, denominator = float(self.word(j)), float(self.word(j + 2))
            if 0 < numerator < denominator:  # '3 1/2'
                return _Number(value + numerator / denominator, i, j + 3, 'digits')
        if integer and j < len(self.tokens) and self.tokens[j].kind == 'vulgar':
            return _Number(value + _VULGAR[self.tokens[j].text], i, j + 1, 'digits')
        return self._half_suffix(_Number(value, i, j, 'digits'))

    def _is_int(self, i: int) -> bool:
        return 0 <= i < len(self.tokens) and self.tokens[i].kind == 'num' and \
            self.tokens[i].text.isdigit()

    def _half_suffix(self, number: _Number) -> _Number:
        """Extend by 'and a half' / 'and a quarter' / 'and three quarters'."""
        j = number.end
        if self.word(j) != 'and':
            return number
        fraction = self._fraction(j + 1)
        if fraction is None:
            return number
        value, end = fraction
        return _Number(number.value + value, number.start, end, number.kind, number.vague)

    def _fraction(self, i: int) -> tuple[float, int] | None:
        """Read 'a half', 'one half', 'a quarter', 'three quarters' (without 'of a')."""
        head = self.word(i)
        count = 1.0 if head in ('a', 'an', 'one') else float(_ONES.get(head, 0))
        if count <= 0 or self.word(i + 1) not in _DENOMINATORS:
            return None
        return count / _DENOMINATORS[self.word(i + 1)], i + 2

    def _skip_of_a(self, j: int) -> int:
        """Skip 'of', 'a', 'of a' after a fraction ('half of a meter', 'half a meter')."""
        if self.word(j) == 'of':
            j += 1
        if self.word(j) in ('a', 'an'):
            j += 1
        return j

    def _words(self, i: int) -> _Number | None:
        w = self.word(i)
        if w == 'point' and self.word(i + 1) in _ONES:  # 'point five' = 0.5
            k, digits = i + 1, ''
            while self.word(k) in _ONES:
                digits += str(_ONES[self.word(k)])
                k += 1
            return _Number(float(f'0.{digits}'), i, k, 'words')
        if w == 'half':
            return _Number(0.5, i, self._skip_of_a(i + 1), 'words')
        if w in ('a', 'an'):
            nxt = self.word(i + 1)
            fraction = self._fraction(i)
            if fraction is not None:
                value, end = fraction
                return _Number(value, i, self._skip_of_a(end), 'words')
            if nxt in ('couple', 'few'):
                j = i + 2 + (self.word(i + 2) == 'of')
                return _Number(2.0 if nxt == 'couple' else 3.0, i, j, 'words', vague=True)
            if nxt == 'dozen':
                return _Number(12.0, i, i + 2, 'words')
            if nxt in _SCALES:
                return self._cardinal(i + 1, i, leading_one=True)
            return _Number(1.0, i, i + 1, 'article')
        if w in ('couple', 'few'):
            j = i + 1 + (self.word(i + 1) == 'of')
            return _Number(2.0 if w == 'couple' else 3.0, i, j, 'words', vague=True)
        if w in _ONES or w in _TEENS or w in _TENS:
            return self._cardinal(i, i)
        return None

    def _cardinal(self, i: int, start: int, leading_one: bool = False) -> _Number | None:
        """Read 'one hundred and twenty', 'twenty-five', 'two point five', 'three quarters'."""
        total, current, last, j = 0, 1 if leading_one else 0, 'start', i
        if leading_one:
            last = 'ones'
        while j < len(self.tokens):
            w = self.word(j)
            if w in _ONES and last in ('start', 'tens', 'hundred', 'thousand'):
                current += _ONES[w]
                last = 'ones'
            elif w in _TEENS and last in ('start', 'hundred', 'thousand'):
                current += _TEENS[w]
                last = 'teen'
            elif w in _TENS and last in ('start', 'hundred', 'thousand'):
                current += _TENS[w]
                last = 'tens'
            elif w == 'hundred' and last in ('ones', 'teen', 'tens'):
                current *= 100
                last = 'hundred'
            elif w == 'thousand' and last in ('ones', 'teen', 'tens', 'hundred'):
                total += current * 1000
                current, last = 0, 'thousand'
            elif w == '-' and last == 'tens' and self.word(j + 1) in _ONES:
                pass
            elif (w == 'and' and last in ('hundred', 'thousand')
                  and (self.word(j + 1) in _ONES or self.word(j + 1) in _TEENS
                       or self.word(j + 1) in _TENS)
                  and self._fraction(j + 1) is None):
                pass
            else:
                break
            j += 1
        if last == 'start':
            return None
        value = float(total + current)
        if self.word(j) == 'point' and self.word(j + 1) in _ONES:
            k, digits = j + 1, ''
            while self.word(k) in _ONES:
                digits += str(_ONES[self.word(k)])
                k += 1
            return _Number(float(f'{total + current}.{digits}'), start, k, 'words')
        if self.word(j) in _DENOMINATORS and value >= 1 and last in ('ones', 'teen', 'tens'):
            return _Number(value / _DENOMINATORS[self.word(j)], start,
                           self._skip_of_a(j + 1), 'words')
        return self._half_suffix(_Number(value, start, j, 'words'))

    # -- units -----------------------------------------------------------------------------

    def unit(self, j: int, number: _Number) -> _Unit | None:
        if j >= len(self.tokens):
            return None
        token = self.tokens[j]
        if token.text == '-' and self.adjacent(j) and j + 1 < len(self.tokens) and \
                self.tokens[j + 1].kind == 'word':  # '3-foot'
            j += 1
            token = self.tokens[j]
        if token.kind == 'sym':
            if number.kind != 'digits' or not self.adjacent(j):
                return None
            first = self.tokens[number.start].start
            if first > 0 and self.text[first - 1].translate(_CHAR_MAP) == token.text:
                return None  # a quoted number: '"3"'
            if token.text in _FEET_MARKS:
                if self.word(j + 1) in _FEET_MARKS and self.adjacent(j + 1):
                    return _Unit('in', j + 2, False)  # 3'' (two apostrophes)
                return _Unit('ft', j + 1, False)
            if token.text in _INCH_MARKS:
                return _Unit('in', j + 1, False)
            return None
        if token.kind != 'word' or token.text not in _UNIT_WORDS:
            return None
        spelled = token.text not in _ABBREVIATIONS
        if number.kind == 'article' and not spelled:
            return None
        if token.text == 'in' and not self._inch_context(j):
            return None
        return _Unit(_UNIT_WORDS[token.text], j + 1, spelled)

    def _inch_context(self, j: int) -> bool:
        """Whether a bare 'in' at ``j`` reads as inches ('3 in away', '5 ft 3 in.')."""
        if j + 1 >= len(self.tokens):
            return True
        nxt = self.tokens[j + 1]
        if nxt.kind == 'sym':
            return nxt.text != '-'
        return nxt.kind == 'word' and nxt.text in _IN_FOLLOWERS

    # -- lengths ---------------------------------------------------------------------------

    def length(self, i: int) -> ParsedDistance | None:
        """Read a length starting at token ``i``, or None."""
        first = self.number(i)
        if first is None:
            return None
        unit = self.unit(first.end, first)
        if first.kind == 'article' and unit is None:
            return None
        between = self.word(i - 1) == 'between'
        ranged = self._range(first, unit, between)
        if ranged is not None:
            return ranged
        if unit is None:
            return None
        value = first.value * UNIT_METRES[unit.unit]
        end = unit.end
        # 'a foot and a half'
        if self.word(end) == 'and':
            fraction = self._fraction(end + 1)
            if fraction is not None:
                value += fraction[0] * UNIT_METRES[unit.unit]
                end = fraction[1]
        # compounds: 5 ft 3 in, 5'3", 5'3, 1 m 20 cm
        value, end = self._compound(value, unit, end)
        return self._result(i, end, value, unit.unit, vague=first.vague)

    def _range(self, first: _Number, unit: _Unit | None,
               between: bool) -> ParsedDistance | None:
        k = unit.end if unit is not None else first.end
        connector = self.word(k)
        if not (connector in _RANGE_WORDS or (connector == 'and' and between)):
            return None
        second = self.number(k + 1)
        if second is None or second.kind == 'article':
            return None
        unit2 = self.unit(second.end, second)
        if unit2 is None and unit is None:
            return None
        u1 = unit.unit if unit is not None else unit2.unit if unit2 is not None else ''
        u2 = unit2.unit if unit2 is not None else u1
        low = first.value * UNIT_METRES[u1]
        high = second.value * UNIT_METRES[u2]
        end = unit2.end if unit2 is not None else second.end
        start = first.start - 1 if between else first.start
        return self._result(start, end, (low + high) / 2.0, u2, range_m=(low, high),
                            vague=first.vague or second.vague)

    def _compound(self, value: float, unit: _Unit, end: int) -> tuple[float, int]:
        system = next(s for s in _SYSTEMS if unit.unit in s)
        j = end + (self.word(end) in (',', 'and', '.'))
        second = self.number(j)
        if second is None or second.kind == 'article':
            return value, end
        unit2 = self.unit(second.end, second)
        if unit2 is None:
            if unit.unit == 'ft' and j == end and second.value < 12 and \
                    second.value.is_integer() and self.number(second.end) is None:
                # 5'3 : feet mark, then a bare inch count
                if not unit.spelled and self.word(end - 1) in _FEET_MARKS and \
                        second.kind == 'digits':
                    return value + second.value * UNIT_METRES['in'], second.end
                # 'six foot two' (tall): spelled foot, then an inch count ending the phrase
                after = self.tokens[second.end] if second.end < len(self.tokens) else None
                if self.word(end - 1) == 'foot' and (after is None or after.kind == 'sym'
                                                     or after.text in _IN_FOLLOWERS):
                    return value + second.value * UNIT_METRES['in'], second.end
            return value, end
        if unit2.unit in system and system.index(unit2.unit) > system.index(unit.unit):
            return value + second.value * UNIT_METRES[unit2.unit], unit2.end
        return value, end

    def _result(self, start: int, end: int, value: float, unit: str,
                range_m: tuple[float, float] | None = None,
                vague: bool = False) -> ParsedDistance:
        approximate, bound = False, None
        k = start
        if self.word(k - 1) == '.' and self.word(k - 2) in ('approx', 'ca', 'abt'):
            k -= 1  # 'approx. 2 m'
        while k > 0:
            for words, meaning in _QUALIFIERS:
                n = len(words)
                if tuple(self.word(m) for m in range(k - n, k)) == words and k - n >= 0:
                    if meaning == 'approx':
                        approximate = True
                    elif bound is None:
                        bound = meaning
                    k -= n
                    break
            else:
                break
        lo, hi = self.tokens[start].start, self.tokens[end - 1].end
        return ParsedDistance(value, unit, self.text[lo:hi], (lo, hi), None, approximate,
                              bound, range_m, vague)

    def percent_at(self, number: _Number) -> bool:
        return self.word(number.end) in ('%', 'percent', 'per')


def _no_length_reason(reader: _Reader) -> str:
    numbers = [reader.number(i) for i in range(len(reader.tokens))]
    if not any(n is not None and n.kind != 'article' for n in numbers):
        return 'no number'
    return 'number without a unit'


def _bare_number(reader: _Reader, unit: str) -> ParsedDistance | None:
    """Read an answer like '2.5.' or 'The distance is 3.' with the default unit."""
    numeric = [i for i, t in enumerate(reader.tokens) if t.kind in ('num', 'vulgar')]
    if not numeric:
        return None
    number = reader.number(numeric[0])
    if number is None or reader.percent_at(number):
        return None
    if any(i >= number.end for i in numeric):
        return None  # more than one number
    rest = reader.tokens[number.end:]
    if any(t.kind != 'sym' or t.text not in '.!' for t in rest):
        return None
    if reader.word(number.start - 1) in _LABEL_WORDS:
        return None
    return reader._result(number.start, number.end, number.value * UNIT_METRES[unit], unit)


def parse_distance(text: str | None, config: ParseConfig | None = None) -> ParsedDistance:
    """
    Read a length from a model answer ('The distance is roughly 0.4m.' -> 0.4 m).

    :param text: the answer.
    :param config: parsing options (defaults: no unit assumed for bare numbers).
    :return: the first length stated (``value_m`` in metres), or ``value_m=None`` with a
        ``reason``. See the module docstring for the conventions.
    """
    cfg = config or ParseConfig()
    if text is None or not text.strip():
        return ParsedDistance(None, reason='empty')
    reader = _Reader(text, cfg)
    found: list[ParsedDistance] = []
    i = 0
    while i < len(reader.tokens):
        result = reader.length(i)
        if result is None or result.span is None:
            i += 1
            continue
        found.append(result)
        while i < len(reader.tokens) and reader.tokens[i].start < result.span[1]:
            i += 1
    if not found:
        if cfg.default_unit is not None:
            bare = _bare_number(reader, cfg.default_unit)
            if bare is not None:
                return dataclasses.replace(bare, candidates=1)
        return ParsedDistance(None, reason=_no_length_reason(reader))
    best = found[0]
    if best.vague and not cfg.allow_vague:
        return ParsedDistance(None, reason='vague quantity', candidates=len(found))
    if best.bound is not None and not cfg.allow_bounds:
        return ParsedDistance(None, reason=f'{best.bound} bound only', candidates=len(found))
    if best.value_m is None or not math.isfinite(best.value_m):
        return ParsedDistance(None, reason='not finite', candidates=len(found))
    return dataclasses.replace(best, candidates=len(found))


# -- yes / no and choices ------------------------------------------------------------------

_UNCERTAIN_RE = re.compile(
    r'\b(hard to (tell|say)|difficult to (tell|say|determine)|impossible to (tell|say)'
    r"|can(no|')?t (tell|say|determine|be sure)|can not (tell|say)|could ?n[o']?t (tell|say)"
    r'|not (sure|certain|clear(ly)?|possible to)|unclear|unsure|uncertain|ambiguous'
    r"|(don'?t|do not) know|no idea|if at all|neither|it depends|unknown|maybe|perhaps"
    r'|possibly|about the same|roughly the same|side by side|equally)\b')
_YES_START_RE = re.compile(
    r'^(yes|yeah|yep|yup|correct|true|indeed|affirmative|absolutely|definitely|certainly'
    r'|of course|sure|right'
    r"|(that'?s|that is|it'?s|it is|you'?re|you are) (right|correct|true))\b"
    r'|^(it|that|they) (is|does|do|are)\W*$')
_NO_START_RE = re.compile(
    r'^(no|nope|nah|not|incorrect|false|wrong|negative|never'
    r"|(that'?s|that is|it'?s|it is) (not|incorrect|false|wrong)"
    r"|(it|that|they) (is ?n'?t|does ?n'?t|are ?n'?t|do ?n'?t|is not|does not|are not"
    r'|do not))\b')
_NO_ANYWHERE_RE = re.compile(r"\b(not|never|incorrect|false|isn'?t|aren'?t|doesn'?t|don'?t"
                             r"|wasn'?t|other way around)\b")
_YES_ANYWHERE_RE = re.compile(r'\b(yes|indeed|correct|true|certainly|definitely)\b')


def _normalise(text: str) -> str:
    return ' '.join(text.translate(_CHAR_MAP).lower().split())


def is_uncertain(text: str | None) -> bool:
    """Return whether an answer hedges ('hard to tell', 'neither', 'not clearly', ...)."""
    return bool(text) and bool(_UNCERTAIN_RE.search(_normalise(text or '')))


def parse_yes_no(text: str | None) -> bool | None:
    """
    Read a yes/no answer: True, False, or None when it hedges or says neither.

    The opening decides ('Yes, ...', 'Correct', "That's right", 'No, ...', 'Incorrect',
    'Not really'); without one, a negation anywhere ('[A] is not left of [B]', "it's the other
    way around") means False and 'indeed' / 'yes' / 'correct' True. A bare restatement
    ('[A] is left of [B]') is None: it cannot be graded without the question.
    """
    if not text:
        return None
    norm = _normalise(text)
    norm = re.sub(r'^(well|hmm+|so|ok(ay)?|i think|i believe|answer:)[,:]?\s+', '', norm)
    if not norm or _UNCERTAIN_RE.search(norm):
        return None
    if _NO_START_RE.match(norm):
        return False
    if _YES_START_RE.match(norm):
        return True
    if _NO_ANYWHERE_RE.search(norm):
        return False
    if _YES_ANYWHERE_RE.search(norm):
        return True
    return None


_STOPWORDS = frozenset({'the', 'a', 'an', 'of', 'to', 'in', 'on', 'is', 'it', 'one', 'and',
                        'than', 'that', 'this', 'at', 'by', 'with', 'more', 'object'})
_ORDINALS: tuple[tuple[str, int], ...] = (
    (r'\b(the )?(first|former)( one)?\b', 0), (r'\b(the )?(second|latter)( one)?\b', 1),
    (r'^\(?option ([ab])\)?\W*$', -1), (r'^\(?([ab])\)?[.):]?$', -1))


def _words_of(text: str) -> list[str]:
    return re.findall(r"[^\W_]+(?:'[^\W_]+)?", _normalise(text))


def _strip_article(caption: str) -> str:
    return re.sub(r'^(the|a|an) ', '', _normalise(caption))


def parse_choice(text: str | None, options: list[str] | tuple[str, ...]) -> int | None:
    """
    Return the index of the option (an object caption) an answer names, or None.

    Whole-word matches of each caption (leading 'the' / 'a' ignored) are found; a match inside
    a longer option's match does not count ('mug' inside 'red mug'). If several options are
    named, the first named wins ('The red mug is further left than the cup.'). Without a full
    caption, words that only one option has decide ('the red one' -> 'red mug' when the other
    is 'blue mug'); then 'first' / 'former' / 'second' / 'latter' and lone letters 'A' / 'B'.
    Hedges ('neither', 'hard to tell') give None.
    """
    if not text or not options:
        return None
    norm = _normalise(text)
    if _UNCERTAIN_RE.search(norm):
        return None
    captions = [_strip_article(o) for o in options]
    spans: list[tuple[int, int, int]] = []  # (start, end, option)
    for index, caption in enumerate(captions):
        if not caption:
            continue
        for m in re.finditer(r'(?<![^\W_])' + re.escape(caption) + r'(?![^\W_])', norm):
            spans.append((m.start(), m.end(), index))
    kept = [s for s in spans
            if not any(o[0] <= s[0] and s[1] <= o[1] and (o[1] - o[0]) > (s[1] - s[0])
                       for o in spans)]
    if kept:
        chosen = {s[2] for s in kept}
        if len(chosen) == 1 or len(set(captions)) == len(captions):
            return min(kept)[2]
        return None
    words = set(_words_of(norm))
    option_words = [set(_words_of(c)) - _STOPWORDS for c in captions]
    hits = []
    for index, own in enumerate(option_words):
        others: set[str] = set()
        for k, other in enumerate(option_words):
            if k != index:
                others |= other
        hits.append(len((own - others) & words))
    best = max(hits)
    if best > 0 and hits.count(best) == 1:
        return hits.index(best)
    for pattern, position in _ORDINALS:
        found = re.search(pattern, norm)
        if found:
            if position < 0:
                position = 'ab'.index(found.group(1))
            return position if position < len(options) else None
    return None
