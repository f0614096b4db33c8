"""The report's headline picks the best policy of each kind on real val, never on test."""

from __future__ import annotations

from synthmed.report import collect


def _runs(table: dict[str, tuple[list[float], list[float] | None]]) -> collect.ClassifierRuns:
    runs = collect.ClassifierRuns()
    for policy, (test, val) in table.items():
        for seed, t in enumerate(test):
            raw = {"test": {"balanced_accuracy": t}}
            if val is not None:
                raw["val"] = {"balanced_accuracy": val[seed]}
            runs.raw.setdefault(policy, {})[seed] = raw
            runs.metrics.setdefault(policy, {})[seed] = collect.test_metrics(raw)
    return runs


def test_best_of_each_kind_is_chosen_on_val() -> None:
    # syn_a wins on test, syn_b on val: the headline must report syn_b
    runs = _runs({"syn_a": ([0.80, 0.81, 0.82], [0.60, 0.61, 0.62]),
                  "syn_b": ([0.70, 0.71, 0.72], [0.70, 0.71, 0.72]),
                  "la": ([0.75, 0.76, 0.77], [0.65, 0.66, 0.67]),
                  "resample": ([0.79, 0.79, 0.79], [0.64, 0.64, 0.64])})
    kinds = {"syn_a": "synthetic", "syn_b": "synthetic", "la": "classical", "resample": "classical"}
    head = collect.headline(runs, kinds)
    picks = {r["role"]: r["policy"] for r in head["rows"]}
    assert head["chosen_on"] == "val"
    assert picks == {"best synthetic": "syn_b", "best classical": "la"}
    diff = head["diffs"][0]
    assert (diff["a"], diff["b"]) == ("syn_b", "la") and abs(diff["mean"] - (-0.05)) < 1e-9


def test_falls_back_to_test_and_says_so_without_val() -> None:
    runs = _runs({"syn": ([0.8, 0.8], None), "la": ([0.7, 0.7], [0.6, 0.6])})
    head = collect.headline(runs, {"syn": "synthetic", "la": "classical"})
    assert head["chosen_on"] == "test"
