"""RULER-style synthetic long-context tasks, generated offline (Hsieh et al., 2024, "RULER: What's the
Real Context Size of Your Long-Context Language Models?", arXiv 2404.06654; github.com/NVIDIA/RULER).

The tasks that need no download, with RULER's templates (``scripts/data/synthetic/constants.py``):

=================  ============================================================================
task               what the model must return
=================  ============================================================================
niah_single_1      the 7-digit number of one needle; haystack: repeated filler sentences
niah_single_2      the same, haystack: real text (the evaluation corpus, by default Python's stdlib)
niah_single_3      a UUID value instead of a number, real-text haystack
niah_multikey_1    one needle's number among 4 needles with other keys, real-text haystack
niah_multivalue    all 4 numbers of one key, real-text haystack
niah_multiquery    the numbers of 4 keys asked at once, real-text haystack
vt                 variable tracking: every variable of one 4-hop assignment chain, filler haystack
cwe                common-words extraction: the 10 words that appear 30 times in a numbered list
                   whose other words appear 3 times (words from the corpus; below about 3k tokens the
                   10 words appear fewer times, so that a quarter of the list stays rare words)
=================  ============================================================================

Every prompt is built for any tokenizer at a target length in tokens, deterministically from the
seed, the task, the length and the trial: pieces are tokenized separately and concatenated, and the
haystack (filler units, corpus tokens or list entries) is cut to fill the prompt to exactly the
length (``cwe``: at most a rare word's three entries below it). Needles go in at depths drawn from RULER's 40
evenly spaced depths, moved back to the start of a filler sentence (or a line of the corpus text,
within 32 tokens). Scoring is RULER's ``string_match_all``: the fraction of the expected strings
that occur in the output (case-insensitive). Differences from RULER: no chat template or few-shot
example (base-model prompts, as RULER's ``base`` template), Paul Graham essays replaced by the
offline corpus, and ``cwe`` words taken from that corpus instead of the ``wonderwords`` package.
"""

from __future__ import annotations

import gc
import math
import random
import re
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .loaded import item_records, load_for_run
from .method_spec import MethodSpec, check_plan, parse_methods
from .progress import progress_bar
from .results import ResultsFile, group_rows
from .retrieval import bos, check_run_sizes, encode, greedy_continuations

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NIAH_TEMPLATE = (
    "Some special magic {kind} are hidden within the following text. Make sure to memorize it. "
    "I will quiz you about the {kind} afterwards.\n"
)
NIAH_NEEDLE = "One of the special magic {kind} for {key} is: {value}."
NIAH_QUESTION = (
    "What are all the special magic {kind} for {query} mentioned in the provided text? "
    "The special magic {kind} for {query} mentioned in the provided text are"
)
VT_TEMPLATE = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
VT_QUESTION = (
    "Question: Find all variables that are assigned the value {value} in the text above. Answer: According "
    "to the chain(s) of variable assignment in the text above, {n} variables are assgined the value {value}, "
    "they are:"
)
CWE_TEMPLATE = (
    "Below is a numbered list of words. In these words, some appear more often than others. "
    "Memorize the ones that appear most often.\n"
)
CWE_QUESTION = (
    "Question: What are the 10 most common words in the above list? Answer: The top 10 words that appear "
    "most often in the list are:"
)
DEPTHS = [round(100 * i / 39) for i in range(40)]  # RULER's np.linspace(0, 100, 40) rounded
SNAP_TOKENS = 32
KEY_WORDS = (
    "ancient bitter brave calm clever crooked curious dusty eager fancy gentle gloomy hollow icy jolly lively "
    "mellow narrow nimble odd proud quiet rapid rusty silent steady tame tidy vivid wary"
).split()
KEY_NOUNS = (
    "anchor badger basket beacon canyon cellar comet compass falcon garden harbor helmet island lantern meadow "
    "mirror orchard parrot pebble pigeon quarry ribbon saddle tavern thistle tunnel valley walnut willow"
).split()


@dataclass
class RulerPrompt:
    ids: list[int]
    answers: list[str]


def string_match_all(output: str, answers: list[str]) -> float:
    """RULER's score: the fraction of ``answers`` found in ``output`` (case-insensitive)."""
    text = output.lower()
    return sum(a.lower() in text for a in answers) / len(answers)


# ------------------------------------------------------------------ haystacks


@dataclass
class Haystacks:
    """What the tasks draw from: the corpus token stream, its newline tokens and its words."""

    stream: list[int]
    newline_ids: frozenset
    words: list[str]
    source: str

    @classmethod
    def from_corpus(cls, tokenizer, data: str | None = None, *, field: str = "text", split: str = "train",
                    encoding: str = "utf-8"):
        from .corpus import load_token_docs
        from .needle import haystack_tokens, newline_token_ids

        docs = load_token_docs(tokenizer, data, field=field, split=split, encoding=encoding)
        stream = haystack_tokens(tokenizer, docs)
        text = tokenizer.decode(stream[:400_000])
        words = sorted({w.lower() for w in re.findall(r"\b[A-Za-z]{4,10}\b", text)})
        return cls(stream, newline_token_ids(tokenizer), words, docs.source)


def _snap(cut: int, hay: list[int], newline_ids: frozenset) -> int:
    for pos in range(cut, max(cut - SNAP_TOKENS, 0) - 1, -1):
        if pos == 0 or hay[pos - 1] in newline_ids:
            return pos
    return cut


def _fill(kind: str, size: int, tokenizer, hay: Haystacks, rng: random.Random):
    """``size`` haystack tokens and the legal insertion points (whole sentences / line starts)."""
    if size < 0:
        raise ValueError("too short")
    if kind == "noise":
        unit = encode(tokenizer, NOISE + " ")
        n, r = divmod(size, len(unit))
        tokens = unit[len(unit) - r :] + unit * n  # the partial unit opens the haystack
        return tokens, lambda cut: r + round((cut - r) / len(unit)) * len(unit) if cut > r else r
    if size > len(hay.stream):
        raise ValueError(f"data: the haystack needs {size} tokens but {hay.source} has {len(hay.stream)}")
    start = rng.randrange(0, len(hay.stream) - size + 1)
    tokens = hay.stream[start : start + size]
    return tokens, lambda cut: _snap(cut, tokens, hay.newline_ids)


def _insert(tokens: list[int], pieces: list[list[int]], cuts: list[int]) -> list[int]:
    out, last = [], 0
    for piece, cut in sorted(zip(pieces, cuts), key=lambda pc: pc[1]):
        out += tokens[last:cut] + piece
        last = cut
    return out + tokens[last:]


# ------------------------------------------------------------------ tasks


@dataclass(frozen=True)
class NiahTask:
    """Needle in a haystack in RULER's variants (``keys`` needles with distinct keys, ``values`` per
    key, ``queries`` keys asked)."""

    name: str
    haystack: str = "essay"  # "noise" (filler sentences) or "essay" (corpus text)
    value_type: str = "number"
    keys: int = 1
    values: int = 1
    queries: int = 1

    def _value(self, rng):
        if self.value_type == "uuid":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        return str(rng.randint(10**6, 10**7 - 1))

    def build(self, tokenizer, length: int, hay: Haystacks, rng: random.Random) -> RulerPrompt:
        kind = "numbers" if self.value_type == "number" else "uuids"
        names = rng.sample([f"{a}-{n}" for a in KEY_WORDS for n in KEY_NOUNS], max(self.keys, self.queries))
        needles, answers = [], []
        for k, key in enumerate(names):
            vals = [self._value(rng) for _ in range(self.values)]
            needles += [encode(tokenizer, "\n" + NIAH_NEEDLE.format(kind=kind, key=key, value=v) + "\n") for v in vals]
            if k < self.queries:
                answers += vals
        query = ", ".join(names[: self.queries - 1]) + (" and " if self.queries > 1 else "") + names[self.queries - 1]
        head = bos(tokenizer) + encode(tokenizer, NIAH_TEMPLATE.format(kind=kind))
        question = encode(tokenizer, "\n" + NIAH_QUESTION.format(kind=kind, query=query))
        size = length - len(head) - len(question) - sum(len(n) for n in needles)
        tokens, snap = _checked_fill(self.name, self.haystack, size, length, tokenizer, hay, rng)
        cuts = [snap(round(size * d / 100)) for d in rng.sample(DEPTHS, len(needles))]
        rng.shuffle(needles)
        return RulerPrompt(head + _insert(tokens, needles, cuts) + question, answers)


@dataclass(frozen=True)
class VariableTrackingTask:
    """RULER's ``vt``: one chain ``VAR A = value``, ``VAR B = VAR A``, ... of ``hops`` hops in filler."""

    name: str = "vt"
    hops: int = 4

    def build(self, tokenizer, length: int, hay: Haystacks, rng: random.Random) -> RulerPrompt:
        value = str(rng.randint(10**4, 10**5 - 1))
        names: list[str] = []
        while len(names) < self.hops + 1:
            v = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5))
            if v not in names:
                names.append(v)
        lines = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, len(names))]
        pieces = [encode(tokenizer, " " + line + " ") for line in lines]
        head = bos(tokenizer) + encode(tokenizer, VT_TEMPLATE)
        question = encode(tokenizer, "\n" + VT_QUESTION.format(value=value, n=len(names)))
        size = length - len(head) - len(question) - sum(len(p) for p in pieces)
        tokens, snap = _checked_fill(self.name, "noise", size, length, tokenizer, hay, rng)
        cuts = sorted(snap(round(size * d / 100)) for d in rng.sample(DEPTHS, len(pieces)))
        ordered = _insert(tokens, pieces, cuts)  # sorted cuts keep the chain in assignment order
        return RulerPrompt(head + ordered + question, names)


@dataclass(frozen=True)
class CommonWordsTask:
    """RULER's ``cwe``: 10 words 30 times each among words 3 times each, in a shuffled numbered list."""

    name: str = "cwe"
    common: int = 10
    freq_common: int = 30
    freq_rare: int = 3

    def build(self, tokenizer, length: int, hay: Haystacks, rng: random.Random) -> RulerPrompt:
        pool = list(hay.words)
        if len(pool) < self.common + 1:
            raise ValueError(f"data: {hay.source} has too few distinct words for cwe ({len(pool)})")
        rng.shuffle(pool)
        common, rare = pool[: self.common], pool[self.common :]
        head = bos(tokenizer) + encode(tokenizer, CWE_TEMPLATE)
        question = encode(tokenizer, "\n" + CWE_QUESTION)
        budget = length - len(head) - len(question)
        line_cost = {w: len(encode(tokenizer, f"100. {w}\n")) for w in common}
        # RULER's 30 repetitions; shorter prompts lower it so that a quarter of the list stays rare words
        freq = min(self.freq_common, (budget * 3 // 4) // sum(line_cost.values()))
        if freq < self.freq_rare + 2:
            raise ValueError(f"cwe: length {length} is too short for a list of common and rare words")
        shuffle_seed = rng.random()

        def body_for(r: int) -> list[int]:
            words = [w for w in common for _ in range(freq)] + [w for w in rare[:r] for _ in range(self.freq_rare)]
            random.Random(shuffle_seed).shuffle(words)
            lines = [f"{i + 1}. {w}\n" for i, w in enumerate(words)]
            return [t for ids in tokenizer(lines, add_special_tokens=False)["input_ids"] for t in ids]

        lo, hi = 0, len(rare)  # the most rare words whose list fits (RULER also searches the count)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if len(body_for(mid)) <= budget:
                lo = mid
            else:
                hi = mid - 1
        body = body_for(lo)
        if len(body) > budget:
            raise ValueError(f"cwe: length {length} is too short for a list of common and rare words")
        return RulerPrompt(head + body + question, common)


def _checked_fill(name, kind, size, length, tokenizer, hay, rng):
    if size < 0:
        raise ValueError(f"{name}: length {length} is too short; the prompt needs at least {length - size} tokens")
    return _fill(kind, size, tokenizer, hay, rng)


TASKS = {
    "niah_single_1": NiahTask("niah_single_1", haystack="noise"),
    "niah_single_2": NiahTask("niah_single_2"),
    "niah_single_3": NiahTask("niah_single_3", value_type="uuid"),
    "niah_multikey_1": NiahTask("niah_multikey_1", keys=4),
    "niah_multivalue": NiahTask("niah_multivalue", values=4),
    "niah_multiquery": NiahTask("niah_multiquery", keys=4, queries=4),
    "vt": VariableTrackingTask(),
    "cwe": CommonWordsTask(),
}


def check_tasks(tasks) -> list[str]:
    tasks = list(tasks)
    if not tasks:
        raise ValueError("tasks: give at least one task")
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"tasks: unknown task {t!r}; known tasks are {', '.join(TASKS)}")
    return tasks


def build_prompt(task: str, tokenizer, length: int, hay: Haystacks, *, seed: int = 0, trial: int = 0) -> RulerPrompt:
    """One prompt of ``task`` at ``length`` tokens, the same for every method and resumed run."""
    if isinstance(length, bool) or not isinstance(length, int) or length < 2:
        raise ValueError(f"length must be an integer >= 2, got {length!r}")
    return TASKS[check_tasks([task])[0]].build(tokenizer, length, hay, random.Random(f"{seed}/{task}/{length}/{trial}"))


# ------------------------------------------------------------------ the run


@dataclass
class RulerConfig:
    """A RULER grid: methods x tasks x lengths x trials."""

    model: str = "smollm2"
    methods: list[str] = field(default_factory=lambda: ["none"])
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    lengths: list[int] = field(default_factory=lambda: [4096])
    trials: int = 2
    seed: int = 0
    max_new_tokens: int | None = None
    data: str | None = None
    encoding: str = "utf-8"
    dtype: str = "float32"
    device: str | None = None

    def __post_init__(self):
        self.methods = [str(m) for m in parse_methods(self.methods)]
        self.tasks = check_tasks(self.tasks)
        check_run_sizes(self.lengths, self.trials, self.max_new_tokens)

    def identity(self) -> dict:
        out = {k: v for k, v in asdict(self).items() if k not in ("methods", "tasks", "lengths", "trials", "device")}
        if out["encoding"] == "utf-8":  # the default stays out, so results files from before still resume
            del out["encoding"]
        return out


def summarize_ruler(items: list[dict]) -> list[dict]:
    """Mean score per (method, task, length) and, as task ``all``, per (method, length)."""

    def reduce(members):
        scores = [m["score"] for m in members]
        mean = sum(scores) / len(scores)
        sd = math.sqrt(sum((s - mean) ** 2 for s in scores) / (len(scores) - 1)) if len(scores) > 1 else None
        return {"score": mean, "n": len(scores), "stderr": None if sd is None else sd / math.sqrt(len(scores))}

    by_task = group_rows(items, ("method", "task", "length"), reduce)
    overall = group_rows(items, ("method", "length"), reduce)
    for row in overall:
        row["task"] = "all"
    return by_task + overall


def run_ruler(config: RulerConfig, output=None, *, resume: bool = True, progress: bool = True,
              model_objects: dict | None = None) -> dict:
    """Run the grid; one item per (method, task, length, trial) with the output and its score."""
    results = ResultsFile(output, kind="ruler", config=asdict(config), identity=config.identity(),
                          key_fields=("method", "task", "length", "trial"), resume=resume)
    methods = [MethodSpec.parse(m) for m in config.methods]
    if not model_objects:
        check_plan(config.model, methods, config.lengths)
    hay = None
    for i, spec in enumerate(methods):
        loaded = load_for_run(config, spec, model_objects, lengths=config.lengths)
        spec = methods[i] = loaded.method  # as it runs: a saved method's settings in the label (issue 25.2)
        results.set_model(str(spec), loaded.description)
        if hay is None:
            hay = Haystacks.from_corpus(loaded.tokenizer, config.data, encoding=config.encoding)
        record = item_records(config, loaded, model_objects)  # what produced each item (issue 25.1)
        todo = []
        for n in config.lengths:
            for t in config.tasks:
                for k in range(config.trials):
                    prompt = build_prompt(t, loaded.tokenizer, n, hay, seed=config.seed, trial=k)
                    made = record(prompt.ids)
                    if results.reuse(made, method=str(spec), task=t, length=n, trial=k) is None:
                        todo.append((n, t, k, prompt, made))
        bar = progress_bar(total=len(todo), desc=f"ruler {spec}", enable=progress)
        for n, t, k, prompt, made in todo:
            answer_tokens = len(encode(loaded.tokenizer, " " + ", ".join(prompt.answers)))
            max_new = config.max_new_tokens or answer_tokens + 8
            text = greedy_continuations(loaded.model, loaded.tokenizer, [prompt.ids], max_new_tokens=max_new)[0]
            results.add({"method": str(spec), "task": t, "length": n, "trial": k, "prompt_tokens": len(prompt.ids),
                         "answers": prompt.answers, "output": text,
                         "score": string_match_all(text, prompt.answers), "produced_by": made})
            bar.update(1)
        bar.close()
        del loaded
        gc.collect()
    keep = {str(m) for m in methods}
    return results.finish("ruler", [r for r in summarize_ruler(results.items)
                                    if r["method"] in keep and r["length"] in config.lengths])


# ------------------------------------------------------------------ table and heatmap


def ruler_table(rows: list[dict]) -> str:
    """Markdown: one row per method and task (``all`` = mean over tasks), lengths as columns (score %)."""
    from .plots import _length_label

    lengths = sorted({r["length"] for r in rows})
    cell = {(r["method"], r["task"], r["length"]): r for r in rows}
    keys = list(dict.fromkeys((r["method"], r["task"]) for r in rows))
    keys.sort(key=lambda mt: (mt[0], mt[1] == "all"))
    lines = ["| method | task | " + " | ".join(_length_label(n) for n in lengths) + " |",
             "|---|---|" + "---:|" * len(lengths)]
    for m, t in keys:
        vals = []
        for n in lengths:
            r = cell.get((m, t, n))
            vals.append("" if r is None else f"{100 * r['score']:.0f} (n={r['n']})")
        lines.append(f"| `{m}` | {t} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot_ruler(rows: list[dict], path, *, title: str = "RULER-style tasks: mean score") -> Path:
    """Heatmap of the mean score over tasks, methods x lengths."""
    from .plots import _figure, _length_label, _save

    rows = [r for r in rows if r["task"] == "all"]
    if not rows:
        raise ValueError("plot: no RULER rows to draw")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lengths = sorted({r["length"] for r in rows})
    grid = [[math.nan] * len(lengths) for _ in methods]
    for r in rows:
        grid[methods.index(r["method"])][lengths.index(r["length"])] = r["score"]
    fig, axes = _figure(2.5 + 1.0 * len(lengths), 1.2 + 0.45 * len(methods))
    ax = axes[0][0]
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for i in range(len(methods)):
        for j in range(len(lengths)):
            if not math.isnan(grid[i][j]):
                ax.text(j, i, f"{100 * grid[i][j]:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [_length_label(n) for n in lengths])
    ax.set_yticks(range(len(methods)), methods, fontsize=8)
    ax.set_xlabel("length")
    fig.colorbar(image, ax=ax, label="score")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


__all__ = [
    "Haystacks",
    "RulerConfig",
    "TASKS",
    "build_prompt",
    "plot_ruler",
    "ruler_table",
    "run_ruler",
    "string_match_all",
    "summarize_ruler",
]
