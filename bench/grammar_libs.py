"""Grammar libraries for constrained JSON decoding, compared on SmolLM2's tokenizer (CPU), by hand.

    .venv/bin/python -m bench.grammar_libs [--rounds 5] [--streams 8]
        [--libs llguidance xgrammar outlines_core]

llguidance is a project dependency. The other two are installed only to compare (neither is in
constraints.txt): ``pip install -c constraints.txt outlines-core==0.2.14``, and xgrammar beside
the virtualenv without its dependencies, because on Linux x86-64 its wheel requires triton (a GPU
compiler) that its CPU path never imports:
``pip install --no-deps --target /tmp/xgrammar-side xgrammar==0.2.9 apache-tvm-ffi==0.1.15.post2``
then ``PYTHONPATH=.:/tmp/xgrammar-side``.

Every library is configured alike: compact JSON (no free whitespace, "," and ":"), end-of-sequence
= SmolLM2's ``<|im_end|>``. Each round measures every library, in an order rotated per round
(medians over rounds reported):
- ``prepare_s``: the library's view of the tokenizer (once per base);
- ``compile_ms``: a nested schema (objects in an array, enums, integer bounds, string lengths,
  required and optional fields) compiled cold (no cache in play); ``start_us``: what a request
  pays once it is cached: our LRU lookup by canonical-schema hash plus a fresh matcher;
- ``doc_*``: S concurrent streams driven by the tokens of S valid documents of that schema
  (compact JSON, SmolLM2's own tokenization): each step, for each row, the library fills the
  row's allowed-token bitmask (``fill``), our ``mask_bias`` sets the forbidden logits of a
  vocabulary-sized row to -inf (``apply``, the same code for every library), the document's
  token must be allowed, and the library advances (``accept``); then end-of-sequence must be
  allowed and the matcher must report a complete document. Per row-token microseconds, and
  milliseconds per decode step of S rows;
- ``random_*``: S rows of greedy picks from random logits under the mask (a fixed seed per
  round, so every library sees the same logits) until end-of-sequence or 400 tokens; each
  document is parsed and validated against the schema with ``jsonschema``;
- ``object_*``: json_object mode (``{"type": "object"}``): compile cold, and S streams of
  arbitrary objects nested two deep driven as above; ``deep_object`` whether a valid object
  nested six deep is accepted, ``rejects_array`` whether ``[`` is forbidden as the first token;
- ``rejects_invalid``: whether a document breaking the schema (an enum value it lacks) is stopped
  by the mask before it completes; ``rejects_control`` the same for a raw control character in a
  string (not JSON);
- ``plain_fill_us``: the library's ``fill`` for the same documents under the schema less its
  ``maxLength``, ``minimum`` and ``maximum``;
- ``apply``: our ``mask_bias`` (a byte-wise table lookup, then an add) against unpacking the bits
  with shifts and a masked fill, on the first library's real bitmasks of round 1.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any, Protocol

import jsonschema
import torch

from adalora_core.serving.constraints import mask_bias, schema_key

MAX_RANDOM_TOKENS = 400
STARTS = 100  # cached starts timed together
SEPARATORS = (",", ":")
WORDS = ["alpha", "bravo", "delta", "echo", "golf", "hotel", "india", "kilo", "lima", "oscar",
         "papa", "romeo", "sierra", "tango", "victor", "zulu"]  # fmt: skip
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "integer", "minimum": 0, "maximum": 9999},
        "name": {"type": "string", "maxLength": 24},
        "status": {"enum": ["active", "paused", "archived"]},
        "owner": {
            "type": "object",
            "properties": {
                "login": {"type": "string", "maxLength": 16},
                "admin": {"type": "boolean"},
            },
            "required": ["login", "admin"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 4},
        "lines": {
            "type": "array",
            "minItems": 1,
            "maxItems": 3,
            "items": {
                "type": "object",
                "properties": {
                    "sku": {"type": "string", "maxLength": 12},
                    "qty": {"type": "integer", "minimum": 1, "maximum": 99},
                    "price": {"type": "number", "minimum": 0},
                },
                "required": ["sku", "qty"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["id", "name", "status", "owner", "lines"],
    "additionalProperties": False,
}
ANY_OBJECT: dict[str, Any] = {"type": "object"}
DEEP_OBJECT = {"a": {"b": {"c": {"d": {"e": {"f": 1}}}}}}


def smollm2_tokenizer(home: Path) -> Any:
    from transformers import AutoTokenizer

    from bench.decode import smollm2_dir

    return AutoTokenizer.from_pretrained(smollm2_dir(home))


def without_bounds(schema: Any) -> Any:
    """The schema less its string lengths and number bounds (what costs some libraries most)."""
    if isinstance(schema, dict):
        return {
            k: without_bounds(v)
            for k, v in schema.items()
            if k not in ("maxLength", "minimum", "maximum")
        }
    return schema


def compact(doc: Any) -> str:
    return json.dumps(doc, separators=SEPARATORS)


def nested_document(rng: random.Random) -> dict[str, Any]:
    """A valid document of SCHEMA, its keys in the schema's order (some libraries fix it)."""
    doc: dict[str, Any] = {
        "id": rng.randint(0, 9999),
        "name": " ".join(rng.sample(WORDS, 2)),
        "status": rng.choice(["active", "paused", "archived"]),
        "owner": {"login": rng.choice(WORDS), "admin": rng.random() < 0.5},
    }
    if rng.random() < 0.6:
        doc["tags"] = rng.sample(["red", "green", "blue"], rng.randint(0, 3))
    lines = []
    for _ in range(rng.randint(1, 3)):
        line: dict[str, Any] = {"sku": f"{rng.choice(WORDS)}-{rng.randint(1, 99)}"}
        line["qty"] = rng.randint(1, 99)
        if rng.random() < 0.5:
            line["price"] = round(rng.uniform(0, 500), 2)
        lines.append(line)
    doc["lines"] = lines
    return doc


def any_object(rng: random.Random, depth: int = 2) -> dict[str, Any]:
    """An arbitrary JSON object nested at most ``depth`` deep."""
    scalars: list[Callable[[], Any]] = [
        lambda: rng.randint(-999, 999),
        lambda: round(rng.uniform(-10, 10), 3),
        lambda: rng.choice(WORDS),
        lambda: rng.random() < 0.5,
        lambda: None,
    ]
    doc: dict[str, Any] = {}
    for key in rng.sample(WORDS, rng.randint(1, 5)):
        kind = rng.randrange(3) if depth > 1 else 0
        if kind == 0:
            doc[key] = rng.choice(scalars)()
        elif kind == 1:
            doc[key] = [rng.choice(scalars)() for _ in range(rng.randint(0, 3))]
        else:
            doc[key] = any_object(rng, depth - 1)
    return doc


class Library(Protocol):
    """What the benchmark needs of a grammar library (bitmask: bit i%32 of int32 word i//32)."""

    name: str

    def prepare(self, tokenizer: Any, eos: int) -> None: ...
    def compile(self, schema: dict[str, Any]) -> Any: ...
    def start(self, compiled: Any) -> Any: ...
    def fill(self, matcher: Any, words: torch.Tensor) -> None: ...
    def accept(self, matcher: Any, token: int) -> bool: ...
    def can_end(self, matcher: Any) -> bool: ...


class LLGuidance:
    name = "llguidance"
    OPTIONS = {"whitespace_flexible": False, "item_separator": ",", "key_separator": ":"}

    def prepare(self, tokenizer: Any, eos: int) -> None:
        from llguidance.hf import from_tokenizer

        self.view = from_tokenizer(tokenizer, eos_token=[eos])

    def compile(self, schema: dict[str, Any]) -> Any:
        import llguidance

        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, overrides=self.OPTIONS)
        matcher = llguidance.LLMatcher(self.view, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return matcher

    def start(self, compiled: Any) -> Any:
        return compiled.deep_copy()

    def fill(self, matcher: Any, words: torch.Tensor) -> None:
        matcher.unsafe_compute_mask_ptr(words.data_ptr(), words.numel() * 4)

    def accept(self, matcher: Any, token: int) -> bool:
        return matcher.consume_token(token)

    def can_end(self, matcher: Any) -> bool:
        return matcher.is_accepting()


class XGrammar:
    name = "xgrammar"

    def prepare(self, tokenizer: Any, eos: int) -> None:
        import xgrammar

        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, stop_token_ids=[eos])
        # One thread and no cache: a cold compile, on the thread llguidance also uses.
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def compile(self, schema: dict[str, Any]) -> Any:
        return self.compiler.compile_json_schema(
            schema, any_whitespace=False, separators=SEPARATORS
        )

    def start(self, compiled: Any) -> Any:
        import xgrammar

        return xgrammar.GrammarMatcher(compiled)

    def fill(self, matcher: Any, words: torch.Tensor) -> None:
        matcher.fill_next_token_bitmask(words.view(1, -1))

    def accept(self, matcher: Any, token: int) -> bool:
        return matcher.accept_token(token)

    def can_end(self, matcher: Any) -> bool:
        return matcher.is_completed()


class OutlinesCore:
    name = "outlines_core"

    def prepare(self, tokenizer: Any, eos: int) -> None:
        """A byte-level vocabulary from the tokenizer (its special tokens left out, as they are
        never text); outlines-core's own constructor would fetch it from a hub."""
        import outlines_core
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        to_byte = {char: byte for byte, char in bytes_to_unicode().items()}
        added = set(tokenizer.added_tokens_decoder)
        tokens: dict[bytes, list[int]] = {}
        for text, token in tokenizer.get_vocab().items():
            if token not in added:
                tokens.setdefault(bytes(to_byte[c] for c in text), []).append(token)
        self.vocabulary = outlines_core.Vocabulary(eos, tokens)

    def compile(self, schema: dict[str, Any]) -> Any:
        import outlines_core
        from outlines_core.json_schema import build_regex_from_schema

        regex = build_regex_from_schema(json.dumps(schema), whitespace_pattern="")
        return outlines_core.Index(regex, self.vocabulary)

    def start(self, compiled: Any) -> Any:
        import outlines_core

        return outlines_core.Guide(compiled)

    def fill(self, matcher: Any, words: torch.Tensor) -> None:
        matcher.write_mask_into(words.data_ptr(), words.numel(), 4)

    def accept(self, matcher: Any, token: int) -> bool:
        try:
            matcher.advance(token, return_tokens=False)
        except ValueError:
            return False
        return True

    def can_end(self, matcher: Any) -> bool:
        return matcher.is_finished()


LIBRARIES: dict[str, Callable[[], Library]] = {
    "llguidance": LLGuidance,
    "xgrammar": XGrammar,
    "outlines_core": OutlinesCore,
}


class Rows:
    """S rows under one grammar: a bitmask and a logits row each, and the time spent per part."""

    def __init__(self, lib: Library, compiled: Any, streams: int, vocab: int) -> None:
        self.lib = lib
        self.seen: list[torch.Tensor] = []  # every bitmask filled, for compare_apply
        self.matchers = [lib.start(compiled) for _ in range(streams)]
        self.words = torch.zeros(streams, (vocab + 31) // 32, dtype=torch.int32)
        self.vocab = vocab
        self.fill_s = self.apply_s = self.accept_s = 0.0

    def mask(self, i: int, logits: torch.Tensor) -> None:
        start = time.perf_counter()
        self.lib.fill(self.matchers[i], self.words[i])
        middle = time.perf_counter()
        logits.add_(mask_bias(self.words[i], self.vocab, logits))
        self.fill_s += middle - start
        self.apply_s += time.perf_counter() - middle
        self.seen.append(self.words[i].clone())

    def accept(self, i: int, token: int) -> bool:
        start = time.perf_counter()
        ok = self.lib.accept(self.matchers[i], token)
        self.accept_s += time.perf_counter() - start
        return ok


def drive_documents(
    lib: Library, compiled: Any, docs: list[str], tokenizer: Any, eos: int
) -> dict[str, Any]:
    """Each stream fed its document's tokens, each masked before it and required to be allowed;
    then end-of-sequence must be allowed by the mask and the matcher must say it can end."""
    vocab = len(tokenizer)
    streams = [tokenizer.encode(d, add_special_tokens=False) + [eos] for d in docs]
    rows = Rows(lib, compiled, len(docs), vocab)
    source = torch.randn(vocab, generator=torch.Generator().manual_seed(0))
    logits = torch.empty(len(docs), vocab)
    accepted = [True] * len(docs)
    steps = tokens = 0
    for position in range(max(len(s) for s in streams)):
        live = [i for i, s in enumerate(streams) if position < len(s) and accepted[i]]
        if not live:
            break
        steps += 1
        for i in live:
            token = streams[i][position]
            logits[i].copy_(source)
            rows.mask(i, logits[i])
            allowed = bool(logits[i, token] != float("-inf"))
            if token == eos:
                accepted[i] = allowed and lib.can_end(rows.matchers[i])
            else:
                accepted[i] = allowed and rows.accept(i, token)
            tokens += 1
    spent = rows.fill_s + rows.apply_s + rows.accept_s
    return {
        "masks": rows.seen,
        "accepted": sum(accepted),
        "tokens": tokens,
        "steps": steps,
        "fill_us": 1e6 * rows.fill_s / tokens,
        "apply_us": 1e6 * rows.apply_s / tokens,
        "accept_us": 1e6 * rows.accept_s / tokens,
        "per_token_us": 1e6 * spent / tokens,
        "per_step_ms": 1e3 * spent / steps,
    }


def drive_random(
    lib: Library, compiled: Any, streams: int, tokenizer: Any, eos: int, seed: int
) -> dict[str, Any]:
    """Greedy picks from random logits under the mask; the documents are validated."""
    vocab = len(tokenizer)
    rows = Rows(lib, compiled, streams, vocab)
    generator = torch.Generator().manual_seed(seed)
    picked: list[list[int]] = [[] for _ in range(streams)]
    done = [False] * streams
    pick_s = 0.0
    tokens = steps = 0
    while not all(done):
        logits = torch.randn(streams, vocab, generator=generator)
        steps += 1
        for i in range(streams):
            if done[i]:
                continue
            rows.mask(i, logits[i])
            start = time.perf_counter()
            token = int(logits[i].argmax())
            pick_s += time.perf_counter() - start
            tokens += 1
            if token == eos or not rows.accept(i, token):
                done[i] = True
            else:
                picked[i].append(token)
                done[i] = len(picked[i]) >= MAX_RANDOM_TOKENS
    valid = 0
    for ids in picked:
        try:
            jsonschema.validate(json.loads(tokenizer.decode(ids)), SCHEMA)
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            pass
    spent = rows.fill_s + rows.apply_s + rows.accept_s + pick_s
    return {
        "valid": valid,
        "documents": streams,
        "tokens": tokens,
        "per_token_us": 1e6 * spent / tokens,
        "per_step_ms": 1e3 * spent / steps,
    }


def accepts(lib: Library, compiled: Any, text: str, tokenizer: Any, eos: int) -> bool:
    """Whether the mask lets ``text`` through to end-of-sequence."""
    return drive_documents(lib, compiled, [text], tokenizer, eos)["accepted"] == 1


def first_token_allowed(lib: Library, compiled: Any, token: int, vocab: int) -> bool:
    rows = Rows(lib, compiled, 1, vocab)
    logits = torch.zeros(vocab)
    rows.mask(0, logits)
    return bool(logits[token] == 0)


def shift_unpack(words: torch.Tensor, size: int, logits: torch.Tensor) -> None:
    """The plain way to apply a bitmask, against which mask_bias was chosen: unpack every bit
    with shifts, then a masked fill."""
    shifts = torch.arange(32, dtype=torch.int32)
    forbidden = ((words.unsqueeze(1) >> shifts) & 1).view(-1)[:size] == 0
    logits.masked_fill_(forbidden, float("-inf"))


def table_add(words: torch.Tensor, size: int, logits: torch.Tensor) -> None:
    logits.add_(mask_bias(words, size, logits))


def compare_apply(masks: list[torch.Tensor], vocab: int, rounds: int) -> dict[str, float]:
    """Microseconds per row to apply the same real bitmasks both ways, alternating, medians."""
    source = torch.randn(vocab, generator=torch.Generator().manual_seed(1))
    ways = {"table_add": table_add, "shift_unpack": shift_unpack}
    results: dict[str, list[float]] = {name: [] for name in ways}
    for round_index in range(rounds):
        for name in list(ways)[:: 1 if round_index % 2 == 0 else -1]:
            rows = [source.clone() for _ in masks]
            start = time.perf_counter()
            for words, logits in zip(masks, rows, strict=True):
                ways[name](words, vocab, logits)
            results[name].append(1e6 * (time.perf_counter() - start) / len(masks))
    first = [source.clone() for _ in masks[:50]]
    second = [source.clone() for _ in masks[:50]]
    for words, a, b in zip(masks, first, second, strict=False):
        table_add(words, vocab, a)
        shift_unpack(words, vocab, b)
        assert torch.equal(a, b), "the two ways disagree"
    return {f"{name}_us": statistics.median(times) for name, times in results.items()}


def timed(function: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def measure(
    lib: Library, tokenizer: Any, eos: int, streams: int, round_index: int
) -> dict[str, Any]:
    rng = random.Random(1000 + round_index)
    _, prepare_s = timed(lambda: lib.prepare(tokenizer, eos))
    compiled, compile_s = timed(lambda: lib.compile(SCHEMA))
    cache = {schema_key(SCHEMA): compiled}
    _, starts_s = timed(lambda: [lib.start(cache[schema_key(SCHEMA)]) for _ in range(STARTS)])
    docs = [compact(nested_document(rng)) for _ in range(streams)]
    doc = drive_documents(lib, compiled, docs, tokenizer, eos)
    rand = drive_random(lib, compiled, streams, tokenizer, eos, seed=round_index)
    invalid = compact({**nested_document(rng), "status": "deleted"})
    # A raw control character in a string: not JSON (json.dumps would escape it).
    control = compact({**nested_document(rng), "name": "a\x17b"}).replace("\\u0017", "\x17")
    plain = drive_documents(lib, lib.compile(without_bounds(SCHEMA)), docs, tokenizer, eos)
    anything, object_s = timed(lambda: lib.compile(ANY_OBJECT))
    objects = [compact(any_object(rng)) for _ in range(streams)]
    obj = drive_documents(lib, anything, objects, tokenizer, eos)
    bracket = tokenizer.convert_tokens_to_ids("[")
    return {
        "masks": doc["masks"],
        "prepare_s": prepare_s,
        "compile_ms": 1e3 * compile_s,
        "start_us": 1e6 * starts_s / STARTS,
        "doc_accepted": doc["accepted"],
        "doc_fill_us": doc["fill_us"],
        "doc_apply_us": doc["apply_us"],
        "doc_accept_us": doc["accept_us"],
        "doc_per_token_us": doc["per_token_us"],
        "doc_per_step_ms": doc["per_step_ms"],
        "random_valid": rand["valid"],
        "random_documents": rand["documents"],
        "random_per_token_us": rand["per_token_us"],
        "random_per_step_ms": rand["per_step_ms"],
        "plain_fill_us": plain["fill_us"],
        "rejects_invalid": not accepts(lib, compiled, invalid, tokenizer, eos),
        "rejects_control": not accepts(lib, compiled, control, tokenizer, eos),
        "object_compile_ms": 1e3 * object_s,
        "object_accepted": obj["accepted"],
        "object_per_token_us": obj["per_token_us"],
        "object_per_step_ms": obj["per_step_ms"],
        "deep_object": accepts(lib, anything, compact(DEEP_OBJECT), tokenizer, eos),
        "rejects_array": not first_token_allowed(lib, anything, bracket, len(tokenizer)),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the timings; counts and checks as their worst round."""
    out: dict[str, Any] = {}
    for key, first in runs[0].items():
        values = [r[key] for r in runs]
        if isinstance(first, bool):
            out[key] = all(values)
        elif key.endswith(("_accepted", "_valid", "_documents")):
            out[key] = min(values)
        else:
            out[key] = statistics.median(values)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--libs", nargs="+", default=list(LIBRARIES), choices=list(LIBRARIES))
    parser.add_argument("--threads", type=int, default=1)
    home = Path(tempfile.gettempdir()) / "adalora-bench-home"
    parser.add_argument("--home", type=Path, default=home)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    tokenizer = smollm2_tokenizer(args.home)
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    libs = {name: LIBRARIES[name]() for name in args.libs}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in libs}
    masks: list[torch.Tensor] = []
    for round_index in range(args.rounds):
        shift = round_index % len(libs)
        order = list(libs)[shift:] + list(libs)[:shift]
        for name in order:
            result = measure(libs[name], tokenizer, eos, args.streams, round_index)
            if round_index == 0 and name == args.libs[0]:
                masks = result["masks"]
            del result["masks"]
            runs[name].append(result)
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    summary = {name: summarize(r) for name, r in runs.items()}
    apply = compare_apply(masks, len(tokenizer), args.rounds)
    reference = args.libs[0]
    print(f"\n{args.streams} streams, SmolLM2 tokenizer ({len(tokenizer)} tokens), "
          f"medians of {args.rounds} rounds:")  # fmt: skip
    for name, s in summary.items():
        print(
            f"{name:>14}: prepare {s['prepare_s']:.2f} s, compile {s['compile_ms']:.2f} ms cold /"
            f" {s['start_us']:.1f} us cached; mask {s['doc_per_token_us']:.1f} us/token"
            f" (fill {s['doc_fill_us']:.1f}, apply {s['doc_apply_us']:.1f}, accept"
            f" {s['doc_accept_us']:.1f}), {s['doc_per_step_ms']:.3f} ms/step;"
            f" random {s['random_valid']}/{s['random_documents']} valid;"
            f" json_object {s['object_compile_ms']:.2f} ms,"
            f" {s['object_per_token_us']:.1f} us/token,"
            f" deep {s['deep_object']}; rejects invalid {s['rejects_invalid']}, control"
            f" {s['rejects_control']}; fill without bounds {s['plain_fill_us']:.1f} us/token"
        )
    print(
        f"applying {len(masks)} real bitmasks to a logits row: mask_bias (table, add)"
        f" {apply['table_add_us']:.1f} us, shifts and masked fill {apply['shift_unpack_us']:.1f} us"
    )
    timings = ("prepare_s", "compile_ms", "start_us", "doc_fill_us", "doc_per_token_us",
               "doc_per_step_ms", "random_per_token_us", "object_compile_ms",
               "object_per_token_us", "plain_fill_us")  # fmt: skip
    ratios = {
        name: {k: summary[name][k] / summary[reference][k] for k in timings}
        for name in summary
        if name != reference
    }
    print(
        json.dumps(
            {
                "bench": "grammar_libs",
                "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
                "torch_threads": args.threads,
                "versions": {name: version(name.replace("_", "-")) for name in libs},
                "vocab": len(tokenizer),
                "streams": args.streams,
                "rounds": args.rounds,
                "results": summary,
                "apply": apply,
                f"ratio_to_{reference}": ratios,
            }
        )
    )


if __name__ == "__main__":
    main()
