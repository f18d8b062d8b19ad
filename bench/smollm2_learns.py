"""Does a SmolLM2 adapter trained through the service learn? Run by hand:

    .venv/bin/python -m bench.smollm2_learns [--steps 120]

Starts `adalora serve` on a fresh home (SmolLM2-135M-Instruct registered from its wheel and
converted on first use), uploads a chat data set that teaches a strict answer format the base
model does not use ("ANSWER: <one word>" for questions about made-up gadgets), submits a
causal-lm job with only the required fields plus the run length, and asks held-out questions
(other gadgets, other attributes) before (the base model, greedy, in transformers) and after
(the adapter, greedy, through POST /infer). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
FORMAT = re.compile(r"^ANSWER: [A-Za-z]+\b")
GADGETS = ["Zorblax lamp", "Quindle kettle", "Marvo drone", "Tessik chair", "Brundle clock",
           "Pexa radio", "Vonter bike", "Glimmo watch", "Orrin tent", "Sprocky toaster",
           "Kelvu fan", "Dribb mug", "Yantle desk", "Fozzle scarf", "Hurl kite",
           "Nimbo heater", "Crell phone", "Wuzz blender", "Tarro boot", "Lumi mirror"]  # fmt: skip
ATTRIBUTES = {
    "colour": ["teal", "amber", "crimson", "ivory", "olive", "violet"],
    "material": ["bamboo", "steel", "glass", "cork", "copper", "wool"],
    "origin": ["Norway", "Peru", "Japan", "Kenya", "Chile", "Wales"],
    "price band": ["budget", "midrange", "premium", "luxury", "bargain", "standard"],
}
QUESTIONS = {
    "colour": "What colour is the {g}?",
    "material": "What is the {g} made of?",
    "origin": "Where is the {g} made?",
    "price band": "Which price band is the {g} in?",
}


def examples(gadgets: list[str], attributes: list[str], seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [
        (QUESTIONS[a].format(g=g), rng.choice(ATTRIBUTES[a])) for g in gadgets for a in attributes
    ]


def chat(question: str, answer: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "user", "content": question}]
    if answer is not None:
        messages.append({"role": "assistant", "content": f"ANSWER: {answer}"})
    return messages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    train = examples(GADGETS[:15], ["colour", "material", "origin"], seed=1)
    held_out = examples(GADGETS[15:], list(ATTRIBUTES), seed=2) + examples(
        GADGETS[:15], ["price band"], seed=3
    )
    with tempfile.TemporaryDirectory() as tmp:
        home, data = Path(tmp) / "home", Path(tmp) / "train.jsonl"
        data.write_text("".join(json.dumps({"messages": chat(q, a)}) + "\n" for q, a in train))
        key, port = "ak_" + secrets.token_urlsafe(24), 8795
        env = {k: v for k, v in os.environ.items() if not k.startswith("ADALORA_")}
        env.update(ADALORA_HOME=str(home), ADALORA_API_KEY=key, ADALORA_PORT=str(port))
        log = (Path(tmp) / "serve.log").open("w")
        server = subprocess.Popen(
            [str(ROOT / ".venv/bin/adalora"), "serve"], env=env, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{port}"
        try:
            http = httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=600
            )
            for _ in range(240):
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            with data.open("rb") as handle:
                dataset = http.post("/datasets", files={"file": ("train.jsonl", handle)}).json()
            body = {
                "base_model": "SmolLM2-135M-Instruct",
                "task": "causal-lm",
                "dataset_id": dataset["id"],
                "training": {"max_steps": args.steps},
            }
            job = http.post("/jobs", json=body).json()
            while job["status"] not in ("succeeded", "failed", "cancelled"):
                time.sleep(2)
                job = http.get(f"/jobs/{job['id']}").json()
            if job["status"] != "succeeded":
                sys.exit(f"job {job['status']}: {job.get('error')}")
            seconds = _time(job["finished_at"]) - _time(job["started_at"])
            before = base_answers([q for q, _ in held_out], home)
            prompts = render([q for q, _ in held_out], home)
            after = http.post(
                "/infer",
                json={"adapter_id": job["adapter_id"], "inputs": prompts,
                      "parameters": {"max_new_tokens": 8}},
            ).json()["outputs"]  # fmt: skip
        finally:
            server.terminate()
            server.wait(60)
            log.close()
    after_texts = [o["text"].strip() for o in after]
    result = {
        "train_rows": len(train),
        "held_out": len(held_out),
        "steps": args.steps,
        "training_seconds": round(seconds, 1),
        "resolved": {k: job["hyperparameters"][k] for k in ("training", "adalora")},
        "format_match_before": sum(bool(FORMAT.match(t)) for t in before) / len(held_out),
        "format_match_after": sum(bool(FORMAT.match(t)) for t in after_texts) / len(held_out),
        "examples": [
            {"question": q, "before": b, "after": a}
            for (q, _), b, a in list(zip(held_out, before, after_texts, strict=True))[:4]
        ],
    }
    print(json.dumps(result))


def _time(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _converted(home: Path) -> Path:
    """The directory the service converted SmolLM2 into (the lock file beside it is hidden)."""
    return next(p for p in (home / "models").iterdir() if p.is_dir() and not p.name.startswith("."))


def render(questions: list[str], home: Path) -> list[str]:
    """The prompts as text, through the base's chat template (loaded once)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_converted(home))
    return [
        tokenizer.apply_chat_template(chat(q), tokenize=False, add_generation_prompt=True)
        for q in questions
    ]


def base_answers(questions: list[str], home: Path) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_converted(home))
    model = AutoModelForCausalLM.from_pretrained(_converted(home)).eval()
    answers = []
    for question in questions:
        prompt = tokenizer.apply_chat_template(
            chat(question), add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
        answers.append(
            tokenizer.decode(
                out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True
            ).strip()
        )
    return answers


if __name__ == "__main__":
    main()
