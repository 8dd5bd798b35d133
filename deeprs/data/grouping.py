"""Which cases belong to one subject (patient), so that no split puts a patient on both sides.

The rule is one regular expression, config key ``data.subject_pattern``, matched against
the whole case id; its group named ``subject`` is the subject. A case id it does not match
is a subject of its own. Ids are compared after Unicode NFC normalisation, so ``pätient001``
typed with a composed ``ä`` and the same id copied from a file system that stores ``a`` plus
a combining diaeresis (macOS) are one subject. The default takes off a trailing
``_frameNN`` (ACDC's two frames of one patient) and accepts any other character, spaces
and non-ASCII letters included:

- ``patient071_frame01`` and ``patient071_frame12`` -> ``patient071``
- ``patient 001_frame01`` -> ``patient 001``; ``pätient001_frame12`` -> ``pätient001``
- ``ct_train_1001`` (MM-WHS, one scan per patient) -> ``ct_train_1001``

A cohort named differently sets its own pattern, e.g. ``(?P<subject>.+)_(ED|ES)`` or
``(?P<subject>sub-[^_]+)_.*``.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from deeprs.errors import ConfigError

DEFAULT_SUBJECT_PATTERN = r"(?P<subject>.+?)_frame\d+"
PATTERN_KEY = "data.subject_pattern"


@functools.lru_cache(maxsize=16)
def compile_subject_pattern(pattern: str) -> re.Pattern[str]:
    """The compiled rule; a pattern that is not a regex or has no ``subject`` group is a
    ConfigError naming the key."""
    try:
        compiled = re.compile(pattern)
    except re.error as error:
        raise ConfigError(
            f"config key '{PATTERN_KEY}': '{pattern}' is not a regular expression ({error})"
        ) from None
    if "subject" not in compiled.groupindex:
        raise ConfigError(
            f"config key '{PATTERN_KEY}': '{pattern}' has no group named 'subject'; mark the "
            "part of the case id that names the patient with (?P<subject>...)"
        )
    return compiled


def subject_of(case_id: str, pattern: str = DEFAULT_SUBJECT_PATTERN) -> str:
    """The subject of ``case_id`` (NFC-normalised): the pattern's ``subject`` group where the
    pattern matches the whole id and the group is not empty, else the id itself."""
    normal = unicodedata.normalize("NFC", case_id)
    match = compile_subject_pattern(pattern).fullmatch(normal)
    subject = match.group("subject") if match else None
    return subject or normal
