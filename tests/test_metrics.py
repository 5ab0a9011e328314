"""Evaluation metrics against hand-computed values (English word level, Chinese character level)."""

from __future__ import annotations

import math

import pytest

from runners.evaluate.metrics import exact_match, score, tokenize
from runners.evaluate.run import check_gate


def test_tokenize_chinese_by_character_english_by_word() -> None:
    assert tokenize("我爱北京, Hello World!") == ["我", "爱", "北", "京", "hello", "world"]
    assert tokenize("  ") == []


def test_exact_match_normalises_whitespace_only() -> None:
    assert exact_match(" Paris  is\nthe capital ", "Paris is the capital") == 1.0
    assert exact_match("Paris is the capital.", "Paris is the capital") == 0.0
    assert exact_match("北京 是首都", "北京是首都") == 0.0


def test_english_hand_computed() -> None:
    # ref: the cat sat on the mat (6 words); hyp: the cat on the mat (5 words).
    s = score("the cat on the mat", "the cat sat on the mat")
    # ROUGE-1: 5 matched unigrams, P = 5/5, R = 5/6 -> F = 10/11.
    assert s["rouge_1"] == pytest.approx(10 / 11)
    assert s["rouge_1_recall"] == pytest.approx(5 / 6)
    # ROUGE-2: 3 of 4 hyp bigrams (the cat, on the, the mat) in 5 ref bigrams -> F = 2/3.
    assert s["rouge_2"] == pytest.approx(2 / 3)
    # ROUGE-L: LCS = 5 -> same as ROUGE-1.
    assert s["rouge_l"] == pytest.approx(10 / 11)
    # BLEU-4: p = 5/5, 3/4, 1/3, 0/2 -> exp smoothing 1/(2*2); BP = exp(1 - 6/5).
    expected = math.exp(1 - 6 / 5) * (1 * 0.75 * (1 / 3) * 0.25) ** 0.25
    assert s["bleu_4"] == pytest.approx(expected)
    assert s["accuracy"] == 0.0


def test_chinese_hand_computed_character_level() -> None:
    s = score("我爱上海", "我爱北京")
    assert s["rouge_1"] == pytest.approx(0.5)  # 我, 爱 of 4 characters each
    assert s["rouge_2"] == pytest.approx(1 / 3)  # 我爱 of 3 bigrams each
    assert s["rouge_l"] == pytest.approx(0.5)
    # p = 2/4, 1/3, 0/2 -> 1/(2*2), 0/1 -> 1/(4*1); equal lengths, BP = 1.
    assert s["bleu_4"] == pytest.approx((0.5 * (1 / 3) * 0.25 * 0.25) ** 0.25)


def test_identical_and_empty() -> None:
    s = score("知识就是力量 knowledge is power", "知识就是力量 knowledge is power")
    assert all(s[k] == pytest.approx(1.0) for k in ("accuracy", "rouge_1", "rouge_2", "rouge_l", "bleu_4"))
    e = score("", "something expected")
    assert e["rouge_1"] == 0.0 and e["bleu_4"] == 0.0 and e["accuracy"] == 0.0


def test_gate_thresholds_and_failures() -> None:
    metrics = {"accuracy": 0.2, "rouge_1": 0.5, "rouge_2": 0.3, "rouge_l": 0.25, "bleu_4": 0.1}
    ok = check_gate(metrics, {"min_rouge_1": 0.4, "min_accuracy": None})
    assert ok == {"thresholds": {"min_rouge_1": 0.4}, "passed": True, "failures": []}
    bad = check_gate(metrics, {"min_rouge_l": 0.3, "min_bleu_4": 0.05})
    assert bad["passed"] is False
    assert bad["failures"] == ["rouge_l 0.2500 < 0.3"]
