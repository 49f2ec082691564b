"""Built-in English training text for the tiny tokenizers.

Kept generic (chat phrases, shape vocabulary, digits, punctuation, a little non-ASCII) so that
conversation text splits into several tokens, as it does with a real vocabulary.
"""

from __future__ import annotations

import itertools

COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES = ("circle", "square", "triangle")

_OPENERS = (
    "Hello! How can I help you today?",
    "Sure, here is a short answer.",
    "I am not sure, could you clarify the question?",
    "Thanks for asking. Let me think about it step by step.",
    "You are a helpful assistant.",
    "The quick brown fox jumps over the lazy dog.",
    "Please describe the image in one sentence.",
    "What is shown in the picture?",
    "What shape is this?",
    "What color is the shape?",
    "How many shapes are there?",
    "Is the second image the same as the first one?",
    "Answer with a single word.",
    "The answer is correct; well done!",
    "Error: the file (config.json) was not found.",
    "Call the function get_weather with the argument city = 'Paris'.",
    "def add(a, b):\n    return a + b\n",
    '{"name": "search", "arguments": {"query": "tiny models"}}',
    "Today is a sunny day in the city of London.",
    "A café in 東京 serves tea 🙂 and naïve crème brûlée.",
)
_NOUNS = ("image", "picture", "photo", "drawing", "shape", "object", "model", "answer", "question", "user")
_VERBS = ("shows", "contains", "has", "depicts", "displays")


def corpus() -> list[str]:
    """A few hundred deterministic sentences; the same on every machine so builds are reproducible."""
    lines = list(_OPENERS)
    for color, shape in itertools.product(COLORS, SHAPES):
        article = "An" if color[0] in "aeiou" else "A"
        lines += [
            f"{article} {color} {shape}.",
            f"It is a {shape}. The {shape} is {color}.",
            f"The {color} {shape} is on the left, and the background is white.",
        ]
    for i, (noun, verb) in enumerate(itertools.product(_NOUNS, _VERBS)):
        lines.append(f"The {noun} {verb} {i + 2} {SHAPES[i % 3]}s and {i % 7} lines, about {i * 13 % 100}%.")
    for n in range(0, 200, 7):
        lines.append(f"Step {n}: loss = {n / 97:.4f}, lr = {n * 3}e-5, tokens: {n * 1024}.")
    lines += [
        "system user assistant tool Assistant: User: model",
        "0123456789 !?.,;:'\"()[]{}<>/\\|-_=+*&^%$#@~`",
    ]
    return lines
