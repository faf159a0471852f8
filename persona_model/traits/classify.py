"""The second trait measure, independent of the first: what the character's own generated replies
sound like. A logistic regression on sentence embeddings (the bundled MiniLM; the caller passes the
encoder, so this layer imports no memory code), trained on hand-written high and low replies of
other situations than the ones it scores, gives each reply P(high); the score is their mean
(chance: 0.5).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from persona_model.generation import Sampling
from persona_model.train.evaluate import generate_reply
from persona_model.traits import Situation, Trait

Embed = Callable[[list[str]], np.ndarray]


def logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> np.ndarray:
    """L2-regularised logistic regression weights for rows `x` (their last column the bias, not
    penalised) and labels `y` in {0, 1}, by Newton's method (a few steps converge on a few
    hundred rows)."""
    w = np.zeros(x.shape[1])
    reg = np.eye(x.shape[1]) * l2
    reg[-1, -1] = 0.0
    for _ in range(25):
        p = 1.0 / (1.0 + np.exp(-x @ w))
        grad = x.T @ (p - y) + reg @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + reg
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.abs(step).max()) < 1e-6:
            break
    return w


def separability(vectors: np.ndarray, labels: Sequence[int], groups: Sequence[int] | None = None, folds: int = 5,
                 shuffle_seed: int | None = None, l2: float = 1.0) -> float:
    """How well a logistic regression on `vectors` (embeddings of lines) tells two speakers apart:
    the accuracy over `folds` cross-validation folds (each line scored by a classifier that never
    saw it; chance 0.5 with balanced labels). Lines of one group (the two speakers' answers to one
    question) are kept in one fold: else a line's near twin from the other speaker, in training
    with the other label, would push the score below chance. With `shuffle_seed`, the labels are
    shuffled first: the control, what a classifier finds in labels that mean nothing."""
    y = np.asarray(labels, dtype=np.float64)
    if shuffle_seed is not None:
        y = y[np.random.default_rng(shuffle_seed).permutation(len(y))]
    group = np.asarray(groups if groups is not None else range(len(y)))
    names = np.random.default_rng(0).permutation(np.unique(group))
    x = np.hstack([np.asarray(vectors, dtype=np.float64), np.ones((len(y), 1))])
    right = 0
    for k in range(folds):
        test = np.isin(group, names[k::folds])
        w = logistic(x[~test], y[~test], l2)
        right += int(((x[test] @ w > 0) == (y[test] > 0.5)).sum())
    return right / len(y)


class ReplyClassifier:
    def __init__(self, embed: Embed, l2: float = 1.0) -> None:
        self.embed = embed
        self.l2 = l2
        self.weights: np.ndarray | None = None

    def fit(self, situations: Sequence[Situation], shuffle_seed: int | None = None) -> ReplyClassifier:
        """Train on the situations' replies; with `shuffle_seed`, each pair's labels are swapped at
        random (the control: what a classifier learns from labels that mean nothing)."""
        texts = [s.high for s in situations] + [s.low for s in situations]
        y = np.array([1.0] * len(situations) + [0.0] * len(situations))
        if shuffle_seed is not None:
            rng = random.Random(shuffle_seed)
            for i in range(len(situations)):
                if rng.random() < 0.5:
                    y[i], y[i + len(situations)] = y[i + len(situations)], y[i]
        x = self._design(texts)
        w = logistic(x, y, self.l2)
        self.weights = w
        return self

    def _design(self, texts: list[str]) -> np.ndarray:
        e = np.asarray(self.embed(texts), dtype=np.float64)
        return np.hstack([e, np.ones((len(texts), 1))])

    def probability(self, texts: Sequence[str]) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("fit the classifier first")
        return np.asarray(1.0 / (1.0 + np.exp(-self._design(list(texts)) @ self.weights)))


@dataclass(frozen=True, slots=True)
class HeldOut:
    pairs: float  # share of held-out pairs whose high reply gets the higher P(high); chance 0.5
    shuffled: float  # the same from classifiers trained on shuffled labels (mean of `controls`): the control


def held_out_accuracy(embed: Embed, trait: Trait, controls: int = 10) -> HeldOut:
    """Two folds (even and odd situations): train on one, score the other's pairs, both ways.
    The control shuffles each training pair's labels at random, `controls` times."""
    halves = [trait.situations[0::2], trait.situations[1::2]]
    texts = [t for s in trait.situations for t in (s.high, s.low)]
    vectors = dict(zip(texts, embed(texts), strict=True))  # each reply embedded once, not once a fit

    def cached(batch: list[str]) -> np.ndarray:
        return np.stack([vectors[t] for t in batch])

    def accuracy(shuffle: int | None) -> float:
        right = total = 0
        for train, test in (halves, halves[::-1]):
            clf = ReplyClassifier(cached).fit(train, shuffle)
            high, low = clf.probability([s.high for s in test]), clf.probability([s.low for s in test])
            right += int((high > low).sum())
            total += len(test)
        return right / total

    return HeldOut(accuracy(None), sum(accuracy(seed) for seed in range(controls)) / controls)


def sampled_reply(model: Any, tokenizer: Any, system: str, prompt: str, sampling: Sampling, seed: int) -> str:
    """One reply drawn as the character draws hers (the configuration's sampling), from `seed`."""
    return generate_reply(model, tokenizer, system, prompt, sampling=sampling, seed=seed).strip()


def generated_score(model: Any, tokenizer: Any, system: str, situations: Sequence[Situation],
                    classifier: ReplyClassifier, sampling: Sampling = Sampling(max_new_tokens=48),
                    seed: int = 0) -> tuple[float, list[str]]:
    """Mean P(high) of the character's replies to the situations, drawn with the default
    configuration's sampling (the same seeds whatever the setting, so settings differ only in
    what the setting does), and the replies."""
    replies = [sampled_reply(model, tokenizer, system, s.prompt, sampling, seed + i) for i, s in enumerate(situations)]
    return float(classifier.probability(replies).mean()), replies
