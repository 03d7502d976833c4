#!/usr/bin/env python3
"""Deterministic, diverse user prompts for the teacher to answer.

    python3 tools/train/prompts.py --out prompts.jsonl [--seed 7]

Prompts are built from topic lists and question/instruction templates (no downloads), plus small talk
and follow-up turns. Each line is {"id": int, "split": "train"|"heldout"|"eval", "prompt": str,
"followup": str|null}. The split is fixed by a hash of the prompt text, so it does not depend on the
order or the number of prompts: "eval" (the 50 prompts of the teacher-scored evaluation, picked among
the held-out ones) and "heldout" (held-out perplexity) are never trained on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random

TOPICS = """
the sun|the moon|the ocean|rain|snow|clouds|volcanoes|earthquakes|rivers|mountains|deserts|forests|
the rainforest|coral reefs|the weather|seasons|rainbows|lightning|the stars|planets|Mars|Jupiter|
black holes|gravity|magnets|electricity|light|sound|heat|water|air|fire|ice|rocks|sand|soil|
dinosaurs|whales|dolphins|sharks|octopuses|elephants|lions|tigers|bears|wolves|foxes|rabbits|
cats|dogs|horses|cows|chickens|bees|ants|butterflies|spiders|birds|owls|penguins|frogs|snakes|
turtles|fish|trees|flowers|grass|mushrooms|seeds|fruit|vegetables|apples|bananas|oranges|bread|
rice|pasta|pizza|soup|salad|cheese|milk|eggs|coffee|tea|chocolate|cookies|cake|breakfast|lunch|
dinner|cooking|baking|gardening|farming|fishing|camping|hiking|swimming|running|cycling|football|
basketball|tennis|chess|music|the piano|the guitar|singing|dancing|painting|drawing|photography|
poetry|books|reading|writing|libraries|museums|movies|theater|history|ancient Egypt|the Romans|
castles|knights|pirates|explorers|maps|trains|cars|bicycles|airplanes|ships|rockets|bridges|
roads|cities|villages|houses|schools|teachers|students|homework|exams|friendship|family|
grandparents|birthdays|holidays|gifts|kindness|honesty|patience|courage|happiness|sadness|anger|
fear|sleep|dreams|exercise|health|doctors|hospitals|teeth|eyes|the heart|the brain|bones|muscles|
vitamins|germs|washing hands|computers|the internet|phones|robots|programming|Python|video games|
email|passwords|money|saving money|shopping|markets|jobs|work|time management|planning a trip|
packing a suitcase|learning a language|learning to swim|public speaking|making friends|moving house|
recycling|pollution|climate|energy|solar power|wind power|batteries|plastic|paper|glass|metal|
clocks|calendars|numbers|fractions|geometry|triangles|circles|measuring|weight|speed|the alphabet|
words|grammar|stories|fairy tales|jokes|riddles|puzzles|board games|toys|kites|boats|lighthouses|
islands|lakes|waterfalls|caves|the Arctic|Antarctica|Africa|Asia|Europe|South America|Australia|
Japan|Italy|France|Egypt|India|Canada|Brazil|a small town|the countryside|a busy street|a rainy day|
a sunny morning|a quiet evening|winter nights|spring|summer|autumn|a picnic|a birthday party|a zoo|
a farm|a bakery|a train station|an airport|the beach|a garden|a kitchen|a classroom|a hospital|a park
"""

QUESTION_TEMPLATES = [
    "What is {t}?",
    "Can you tell me about {t}?",
    "Why is {t} important?",
    "What are three interesting facts about {t}?",
    "Explain {t} to a child.",
    "How would you describe {t} in a few sentences?",
    "What should I know about {t}?",
    "Give me a short introduction to {t}.",
    "What do people usually think about {t}?",
    "Write a short paragraph about {t}.",
    "Write a short poem about {t}.",
    "Write a very short story about {t}.",
    "What is your favorite thing about {t}?",
    "How can I learn more about {t}?",
    "What are some fun activities related to {t}?",
    "List a few words that describe {t}.",
    "What is a common mistake people make about {t}?",
    "Describe {t} using simple words.",
    "What would a day without {t} be like?",
    "Tell me something surprising about {t}.",
    "What questions could a student ask about {t}?",
    "Write two sentences about {t}.",
    "How has {t} changed over time?",
    "What are the good and bad sides of {t}?",
    "Give me some tips about {t}.",
    "I want to write about {t}. Where should I start?",
    "Summarize what you know about {t} in one sentence.",
    "Why do some people like {t}?",
    "How are {t} and {u} different?",
    "What do {t} and {u} have in common?",
    "Write a short story about {t} and {u}.",
    "Can you compare {t} with {u}?",
]

SMALL_TALK = [
    "Hi!", "Hello!", "Hey there.", "Good morning!", "Good evening!", "How are you?",
    "How are you today?", "What's up?", "Who are you?", "What can you do?", "What is your name?",
    "Can you help me?", "Thank you!", "Thanks for your help.", "Tell me a joke.", "Tell me a fun fact.",
    "I'm bored. What should I do?", "I feel tired today.", "I'm happy today!", "I had a bad day.",
    "What is the meaning of life?", "Do you like music?", "What is a good book to read?",
    "Can you give me some advice?", "What should I eat for dinner?", "How do I make a cup of tea?",
    "How do I boil an egg?", "How can I sleep better?", "How do I stay focused?",
    "How can I be more productive?", "How do I make new friends?", "What is a healthy breakfast?",
    "Give me a motivational quote.", "Say something nice.", "What day comes after Monday?",
    "How many days are in a week?", "How many months are in a year?", "What color is the sky?",
    "What is two plus two?", "What is ten minus three?", "What is five times four?",
    "What is the capital of France?", "What is the capital of Japan?", "What is the capital of Italy?",
    "What is the largest ocean?", "What is the tallest animal?", "What do plants need to grow?",
    "Why is the sky blue?", "Why do leaves change color?", "Why do we need to sleep?",
    "How does a rainbow form?", "What is the biggest planet?", "How far is the moon?",
    "Good night!", "Goodbye!", "See you later.", "Can you write a haiku?", "Tell me a story.",
    "Write a short poem about friendship.", "What makes a good friend?", "What is kindness?",
    "Give me three ideas for a weekend.", "How do I say hello in Spanish?", "What is a noun?",
    "What is a verb?", "Spell the word 'apple'.", "What rhymes with cat?", "Count from one to five.",
    "Name three colors.", "Name three fruits.", "Name three animals that live in the sea.",
    "What is the opposite of hot?", "What is the opposite of big?", "Is a tomato a fruit?",
    "What is water made of?", "What is the boiling point of water?", "What do bees make?",
    "Where do penguins live?", "What do cows eat?", "How many legs does a spider have?",
]

FOLLOWUPS = [
    "Can you explain that more simply?", "Tell me more.", "Thanks! Can you give an example?",
    "Can you make it shorter?", "Why is that?", "That's interesting. What else?",
    "Can you say that in one sentence?", "Thank you!", "What do you mean?",
]


def topics() -> list[str]:
    return [t.strip() for t in TOPICS.replace("\n", "").split("|") if t.strip()]


def split_of(prompt: str) -> str:
    h = int(hashlib.sha256(prompt.encode()).hexdigest()[:8], 16) % 1000
    if h < 8:
        return "eval"
    if h < 30:
        return "heldout"
    return "train"


def build(seed: int, n_pairs: int) -> list[dict]:
    rng = random.Random(seed)
    ts = topics()
    prompts: list[str] = []
    seen: set[str] = set()

    def add(p: str):
        if p not in seen:
            seen.add(p)
            prompts.append(p)

    for p in SMALL_TALK:
        add(p)
    single = [q for q in QUESTION_TEMPLATES if "{u}" not in q]
    pair = [q for q in QUESTION_TEMPLATES if "{u}" in q]
    for t in ts:
        for q in single:
            add(q.format(t=t))
    for _ in range(n_pairs):
        t, u = rng.sample(ts, 2)
        add(rng.choice(pair).format(t=t, u=u))
    rng.shuffle(prompts)
    out = []
    for i, p in enumerate(prompts):
        follow = rng.choice(FOLLOWUPS) if rng.random() < 0.2 else None
        out.append({"id": i, "split": split_of(p), "prompt": p, "followup": follow})
    # the 50 eval prompts: the first 50 of split "eval" in a fixed order
    n_eval = 0
    for r in out:
        if r["split"] == "eval":
            n_eval += 1
            if n_eval > 50:
                r["split"] = "heldout"
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--pairs", type=int, default=3000)
    a = ap.parse_args()
    rows = build(a.seed, a.pairs)
    with open(a.out, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    counts = {s: sum(r["split"] == s for r in rows) for s in ("train", "heldout", "eval")}
    print(f"{len(rows)} prompts: {counts}")


if __name__ == "__main__":
    main()
