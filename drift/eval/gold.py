"""The verifiable testbed's gold reward: rule checks of a reply against the user's stated preference.

Every testbed conversation (drift/data/fixtures/testbed.jsonl, `data=testbed`) carries a
machine-readable preference spec in its rows' ``Preference`` column: a list of rules such as
``[{"rule": "max_words", "limit": 50}, {"rule": "include_example"}]``. The user states it in words,
the DSAT reply breaks it, the feedback says so. `gold_reward(reply, spec)` scores any reply against
it, with no judge model: each rule gives a score in [0, 1] and a short reason, the reply's score is
their mean, and it `passes` only when every rule scores 1.

Rules whose target is a count give partial credit (a 90-word reply against a 50-word limit scores
50/90), so a policy that moves toward the preference shows it before it gets there; rules that are
yes/no (no code, ends with a question) score 0 or 1.

    from drift.eval.gold import gold_reward, load_specs
    specs = load_specs()                                   # conversation id -> spec
    gold_reward("Short answer?", specs["tb-word-limit-volcano"]).score
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from drift.data.sources import TESTBED_ANNOTATION as TESTBED_FILE
from drift.io import jsonl_lines

SPEC_COLUMN = "Preference"
CONVERSATION_COLUMN = "conversation_id"


class SpecError(ValueError):
    """A preference spec that names an unknown rule or gives it bad parameters."""


@dataclass(frozen=True)
class RuleScore:
    rule: str
    score: float  # in [0, 1]
    detail: str  # why, in a few words: "63 words, limit 50"


@dataclass(frozen=True)
class GoldScore:
    score: float  # mean of the rule scores
    passed: bool  # every rule scored 1
    rules: tuple[RuleScore, ...]

    def as_dict(self) -> dict:
        return {"score": self.score, "passed": self.passed,
                "rules": [{"rule": r.rule, "score": r.score, "detail": r.detail} for r in self.rules]}


# ---------------------------------------------------------------- text measures

# a word: letters or digits, with inner apostrophes or hyphens ("don't", "well-known"); any script
WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")
BULLET_LINE = re.compile(r"^\s*[-*•]\s+\S")
# "1. ", "2) ", "Step 3: " (small models often write the last)
NUMBERED_LINE = re.compile(r"^\s*(?:step\s+)?\d{1,2}\s*[.):]\s+\S", re.IGNORECASE)
JSON_FENCE = re.compile(r"^```(?:json)?\s*\n(.*)\n```$", re.DOTALL | re.IGNORECASE)
# a sentence ends at . ! ? (or several) followed by a space or the end; abbreviations like "e.g."
# inside a sentence are rare in the testbed's replies and would only over-count
SENTENCE_END = re.compile(r"[.!?…]+(?=\s|$)")
EXAMPLE_MARKERS = re.compile(r"\b(?:for example|for instance|examples?)\b|\be\.g\.", re.IGNORECASE)
CODE_FENCE = re.compile(r"```|~~~")
CODE_LINE = re.compile(
    r"^\s*(def |class \w+[:(]|import \w|from [\w.]+ import |#include|function \w+\s*\(|(const|let|var) \w+\s*=|"
    r"public (static )?\w|SELECT .+ FROM|print\(|console\.log\(|for \(.*;.*\)|\w+\s*=\s*\w+\(.*\)\s*;?\s*$)"
    r"|[;{]\s*$"
)
TABLE_LINE = re.compile(r"^\s*\|.*\|\s*$")
TABLE_SEPARATOR = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$")

# Function words of English and of each language we check. A word that is a function word in both
# ("a", "in", "die", "on", "son") counts for neither, so the count tells the languages apart.
ENGLISH_WORDS = frozenset(
    "the a an and or but of to in on at for with is are was were be been it this that these those you your "
    "i we they he she not no do does did have has had will would can could should from by as if so what "
    "which who how when there their our my me him her them its about into than then just also very".split()
)
LANGUAGE_WORDS = {
    "fr": "le la les un une des du de et ou mais est sont être avec pour dans sur pas ne que qui vous nous "
          "je tu il elle ils elles ce cette ces au aux plus très votre vos mon ma mes son sa ses leur bien "
          "aussi comme faire peut été ont avez sans chez donc alors a on en",
    "es": "el la los las un una unos unas y o pero es son está están con para por en del al que qué no "
          "se su sus muy más como también usted ustedes yo tú él ella nosotros lo le les este esta "
          "estos estas hay ser tiene puede cuando donde a",
    "de": "der die das den dem des ein eine einen einem und oder aber ist sind war mit für auf nicht "
          "ich du er sie wir ihr es zu im am vom zum zur auch sehr wie wenn dann noch nur kann können "
          "haben hat werden wird bei nach aus in an so",
    "it": "il lo la gli le un una uno e o ma è sono con per di da del della nel nella che non si "
          "anche molto come più questo questa io tu lui lei noi voi loro ha hanno essere può quando a in i",
    "pt": "o os as um uma uns umas e ou mas é são está estão com para por em no na nos nas do da dos "
          "das que não se seu sua muito mais como também eu você ele ela nós isso este esta pode quando a",
}
LANGUAGE_WORDS = {code: frozenset(text.split()) for code, text in LANGUAGE_WORDS.items()}
LANGUAGE_NAMES = {"fr": "French", "es": "Spanish", "de": "German", "it": "Italian", "pt": "Portuguese"}


def words(text: str) -> list[str]:
    return WORD.findall(text)


def sentences(text: str) -> list[str]:
    # list lines count as sentences of their own even without a full stop
    pieces = []
    for line in text.splitlines():
        pieces += [piece for piece in SENTENCE_END.split(line) if WORD.search(piece)]
    return pieces


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _count_ratio(count: int, target: int) -> float:
    return min(1.0, count / target) if target > 0 else 1.0


def _terms_found(text: str, terms: list[str]) -> list[str]:
    lower = text.lower()
    return [term for term in terms if re.search(r"(?<!\w)" + re.escape(term.lower()) + r"(?!\w)", lower)]


# ---------------------------------------------------------------- the rules: (reply, **params) -> (score, detail)

def max_words(reply: str, limit: int) -> tuple[float, str]:
    count = len(words(reply))
    return (1.0 if count <= limit else limit / count), f"{count} words, limit {limit}"


def min_words(reply: str, limit: int) -> tuple[float, str]:
    count = len(words(reply))
    return _count_ratio(count, limit), f"{count} words, at least {limit} asked"


def max_sentences(reply: str, limit: int) -> tuple[float, str]:
    count = len(sentences(reply))
    return (1.0 if count <= limit else limit / count), f"{count} sentences, limit {limit}"


def bullet_list(reply: str, min_items: int = 3) -> tuple[float, str]:
    # a user who asks for bullet points to skim is served by a numbered list too
    count = sum(bool(BULLET_LINE.match(line) or NUMBERED_LINE.match(line)) for line in _lines(reply))
    return _count_ratio(count, min_items), f"{count} list lines, at least {min_items} asked"


def numbered_steps(reply: str, min_items: int = 3) -> tuple[float, str]:
    count = sum(bool(NUMBERED_LINE.match(line)) for line in _lines(reply))
    return _count_ratio(count, min_items), f"{count} numbered lines, at least {min_items} asked"


def no_list(reply: str) -> tuple[float, str]:
    count = sum(bool(BULLET_LINE.match(line) or NUMBERED_LINE.match(line)) for line in _lines(reply))
    return (1.0 if count == 0 else 0.0), f"{count} list lines"


def include_example(reply: str) -> tuple[float, str]:
    found = EXAMPLE_MARKERS.search(reply)
    return (1.0, f"has {found.group(0)!r}") if found else (0.0, "no 'for example' / 'e.g.' / 'example'")


def language(reply: str, code: str) -> tuple[float, str]:
    tokens = [w.lower() for w in words(reply)]
    target = sum(w in LANGUAGE_WORDS[code] and w not in ENGLISH_WORDS for w in tokens)
    english = sum(w in ENGLISH_WORDS and w not in LANGUAGE_WORDS[code] for w in tokens)
    if target + english == 0:
        return 0.0, f"no {LANGUAGE_NAMES[code]} or English function words"
    return target / (target + english), f"{target} {LANGUAGE_NAMES[code]} vs {english} English function words"


def no_code(reply: str) -> tuple[float, str]:
    if CODE_FENCE.search(reply):
        return 0.0, "has a fenced code block"
    code_lines = [line.strip() for line in _lines(reply) if CODE_LINE.search(line)]
    if code_lines:
        return 0.0, f"code line {code_lines[0][:40]!r}"
    return 1.0, "no code"


def ends_with_question(reply: str) -> tuple[float, str]:
    last = reply.rstrip().rstrip("\"'”’)*_ ")
    return (1.0, "ends with '?'") if last.endswith("?") else (0.0, f"ends with {last[-20:]!r}")


def must_include(reply: str, terms: list[str]) -> tuple[float, str]:
    found = _terms_found(reply, terms)
    missing = [term for term in terms if term not in found]
    return len(found) / len(terms), ("all present" if not missing else f"missing {', '.join(missing)}")


def avoid(reply: str, terms: list[str]) -> tuple[float, str]:
    found = _terms_found(reply, terms)
    return 1.0 - len(found) / len(terms), ("none used" if not found else f"uses {', '.join(found)}")


def json_object(reply: str, keys: list[str] = ()) -> tuple[float, str]:
    # "only JSON" means the whole reply: no prose around it. Inside a code fence it is half right: the
    # object is there, but a script reading the reply as JSON fails.
    text, credit, fenced = reply.strip(), 1.0, JSON_FENCE.match(reply.strip())
    if fenced:
        text, credit = fenced.group(1), 0.5
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return 0.0, "not a JSON document"
    if not isinstance(value, dict):
        return 0.0, f"JSON {type(value).__name__}, not an object"
    missing = [key for key in keys if key not in value]
    score = credit * (1.0 - len(missing) / len(keys) if keys else 1.0)
    detail = "a JSON object with every key" if not missing else f"missing keys {', '.join(missing)}"
    return score, detail + (" (inside a code fence)" if fenced else "")


def table(reply: str, min_rows: int = 2) -> tuple[float, str]:
    lines = _lines(reply)
    separator = next((i for i, line in enumerate(lines) if TABLE_SEPARATOR.match(line)), None)
    if separator is None or separator == 0 or not TABLE_LINE.match(lines[separator - 1]):
        return 0.0, "no markdown table (header row + |---| line)"
    rows = 0
    for line in lines[separator + 1:]:
        if not TABLE_LINE.match(line):
            break
        rows += 1
    return _count_ratio(rows, min_rows), f"table with {rows} rows, at least {min_rows} asked"


def starts_with(reply: str, options: list[str]) -> tuple[float, str]:
    text = reply.lstrip(" \n\t*_\"'").lower()
    for option in options:
        if text.startswith(option.lower()) and not text[len(option):len(option) + 1].isalnum():
            return 1.0, f"starts with {option!r}"
    return 0.0, f"starts with {reply.strip()[:20]!r}, not {' / '.join(options)}"


RULES = {
    "max_words": (max_words, {"limit": int}),
    "min_words": (min_words, {"limit": int}),
    "max_sentences": (max_sentences, {"limit": int}),
    "bullet_list": (bullet_list, {"min_items": int}),
    "numbered_steps": (numbered_steps, {"min_items": int}),
    "no_list": (no_list, {}),
    "include_example": (include_example, {}),
    "language": (language, {"code": str}),
    "no_code": (no_code, {}),
    "ends_with_question": (ends_with_question, {}),
    "must_include": (must_include, {"terms": list}),
    "avoid": (avoid, {"terms": list}),
    "json_object": (json_object, {"keys": list}),
    "table": (table, {"min_rows": int}),
    "starts_with": (starts_with, {"options": list}),
}
# parameters a rule cannot do without (the others have defaults)
REQUIRED = {"max_words": ("limit",), "min_words": ("limit",), "max_sentences": ("limit",), "language": ("code",),
            "must_include": ("terms",), "avoid": ("terms",), "starts_with": ("options",)}


PARAM_KINDS = {int: "a positive integer", str: "a non-empty string", list: "a list of non-empty strings"}


def _param_ok(kind: type, value, *, empty_list_ok: bool) -> bool:
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool) and value > 0
    if kind is str:
        return isinstance(value, str) and bool(value.strip())
    return (isinstance(value, list) and (bool(value) or empty_list_ok)
            and all(isinstance(v, str) and v.strip() for v in value))


def validate_spec(spec, where: str = "preference spec") -> list[dict]:
    """The spec as a list of rule dicts, or a SpecError naming the rule and the fix."""
    if isinstance(spec, dict):
        spec = [spec]
    if not isinstance(spec, list) or not spec:
        raise SpecError(f"{where}: must be a non-empty list of rules like {{\"rule\": \"max_words\", \"limit\": 50}}")
    for index, rule in enumerate(spec):
        name = rule.get("rule") if isinstance(rule, dict) else None
        if name not in RULES:
            raise SpecError(f"{where}, rule {index}: unknown rule {name!r}; known rules: {', '.join(RULES)}")
        params = {key: value for key, value in rule.items() if key != "rule"}
        _, types = RULES[name]  # (scorer, its parameters and their kinds)
        unknown = sorted(set(params) - set(types))
        if unknown:
            raise SpecError(f"{where}, rule {index} ({name}): unknown parameter(s) {', '.join(unknown)}; "
                            f"it takes {', '.join(types) or 'none'}")
        missing = [key for key in REQUIRED.get(name, ()) if key not in params]
        if missing:
            raise SpecError(f"{where}, rule {index} ({name}): missing parameter(s) {', '.join(missing)}")
        for key, value in params.items():
            if not _param_ok(types[key], value, empty_list_ok=key == "keys"):
                raise SpecError(f"{where}, rule {index} ({name}): {key} must be {PARAM_KINDS[types[key]]}, got {value!r}")
        if name == "language" and params["code"] not in LANGUAGE_WORDS:
            raise SpecError(f"{where}, rule {index} (language): code {params['code']!r} is not one of "
                            f"{', '.join(LANGUAGE_WORDS)}")
    return spec


def gold_reward(reply: str, spec) -> GoldScore:
    """Score ``reply`` against a preference spec: mean of the rule scores, each in [0, 1]."""
    rules = []
    for rule in validate_spec(spec):
        function, _ = RULES[rule["rule"]]
        score, detail = function(reply, **{k: v for k, v in rule.items() if k != "rule"})
        rules.append(RuleScore(rule["rule"], round(float(score), 6), detail))
    mean = sum(r.score for r in rules) / len(rules)
    return GoldScore(round(mean, 6), all(r.score == 1.0 for r in rules), tuple(rules))


# ---------------------------------------------------------------- specs of a data file

def conversation_of(record_id: str) -> str:
    """'tb-volcano/t2#guided' (a sample's prompt id) or 'tb-volcano/t2:drift' (a pair id) -> 'tb-volcano'."""
    return record_id.split("#", 1)[0].split(":", 1)[0].rsplit("/t", 1)[0]


def preference_kind(record_id: str) -> str:
    """The composed testbed's two kinds: 'revealed' (only the feedback shows the preference; ids
    tbr-...) or 'stated' (the first message states it; every other conversation)."""
    return "revealed" if conversation_of(record_id).startswith("tbr-") else "stated"


def load_specs(path: str | Path | None = None) -> dict[str, list[dict]]:
    """conversation id -> its preference spec, from an annotation file with a Preference column."""
    path = Path(path) if path else TESTBED_FILE
    if not path.is_file():
        raise FileNotFoundError(f"testbed file {path} does not exist; rebuild it with "
                                "python drift/data/fixtures/testbed_compose.py (or testbed_build.py)")
    specs: dict[str, list[dict]] = {}
    for line in jsonl_lines(path.read_text(encoding="utf-8")):
        where, row, problem = f"{path.name}:{line.number}", line.value, line.problem()
        if problem is not None:
            raise SpecError(f"{where}: {problem}; a testbed row is a JSON object")
        if CONVERSATION_COLUMN not in row or SPEC_COLUMN not in row:
            raise SpecError(f"{where}: a testbed row needs {CONVERSATION_COLUMN} and {SPEC_COLUMN} "
                            "(the gold reward reads the preference spec from there)")
        spec = validate_spec(row[SPEC_COLUMN], where)
        conversation = str(row[CONVERSATION_COLUMN])
        if specs.setdefault(conversation, spec) != spec:
            raise SpecError(f"{where}: conversation {conversation} has two different preference specs")
    if not specs:
        raise SpecError(f"{path}: no rows")
    return specs
