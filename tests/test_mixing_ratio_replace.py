"""``mix.ratio_mode: replace`` and ``mix.ratio_classes`` (the OCT study's R): counts, determinism, shortage."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from synthmed.classifiers.config import MixConfig
from synthmed.classifiers.mixing import plan_mix
from synthmed.errors import ConfigError, DataError

from toydata import toy_set

NAMES = ["CNV", "NORMAL", "DRUSEN"]
REAL = toy_set([30, 20, 10], 3, size=8, seed=0, prefix="train")
SYN = toy_set(40, 3, size=8, seed=9, prefix="synthetic/x")


def plan(seed: int = 0, synthetic=SYN, **kw):
    return plan_mix(MixConfig(policy="ratio", **kw), REAL, synthetic, 3, seed=seed, class_names=NAMES)


@pytest.mark.parametrize(("r", "n_syn"), [(0.0, 0), (0.3, 9), (1.0, 30)])
def test_replace_keeps_the_class_size_and_touches_only_the_named_class(r: float, n_syn: int) -> None:
    p = plan(ratio=r, ratio_mode="replace", ratio_classes=["CNV"])
    assert p.real.counts(3) == [30 - n_syn, 20, 10]
    assert (p.synthetic.counts(3) if p.n_synthetic else [0, 0, 0]) == [n_syn, 0, 0]
    if r > 0:
        assert p.requested == [n_syn, 0, 0] and not p.warnings
        assert all(i.startswith("synthetic/") for i in p.synthetic.ids)
    kept_cnv = [i for i, y in zip(p.real.ids, p.real.labels) if y == 0]
    assert len(set(kept_cnv)) == len(kept_cnv)  # real images are dropped, never duplicated


def test_replace_over_every_class_by_default_rounds_half_up() -> None:
    p = plan(ratio=0.25, ratio_mode="replace")  # 7.5 -> 8, 5, 2.5 -> 3
    assert p.synthetic.counts(3) == [8, 5, 3] and p.real.counts(3) == [22, 15, 7]


def test_replace_is_seeded() -> None:
    a = plan(ratio=0.5, ratio_mode="replace", ratio_classes=["CNV"])
    b = plan(ratio=0.5, ratio_mode="replace", ratio_classes=["CNV"])
    c = plan(seed=1, ratio=0.5, ratio_mode="replace", ratio_classes=["CNV"])
    assert a.real.ids == b.real.ids and a.synthetic.ids == b.synthetic.ids
    assert a.real.ids != c.real.ids  # another seed replaces other real images


def test_replace_shortage_error_and_take_all() -> None:
    few = toy_set([5, 40, 40], 3, size=8, seed=3, prefix="synthetic/y")
    with pytest.raises(DataError, match=r"^ratio=0.5 \(replace\): class 0 needs 15 kept synthetic images but only 5 "
                                        r"exist") as err:
        plan(synthetic=few, ratio=0.5, ratio_mode="replace", ratio_classes=["CNV"])
    assert "\n" not in str(err.value)
    p = plan(synthetic=few, ratio=0.5, ratio_mode="replace", ratio_classes=["CNV"], shortage="take_all")
    assert p.synthetic.counts(3) == [5, 0, 0] and p.real.counts(3) == [5, 20, 10]  # share R kept, class smaller
    assert p.requested == [15, 0, 0] and p.warnings
    p = plan(synthetic=few, ratio=1.0, ratio_mode="replace", ratio_classes=["CNV"], shortage="take_all")
    assert p.synthetic.counts(3) == [5, 0, 0] and p.real.counts(3) == [0, 20, 10]


def test_add_mode_with_named_classes() -> None:
    p = plan(ratio=0.5, ratio_classes=["CNV"])  # add: real kept whole, 30 synthetic CNV join 30 real
    assert p.real.counts(3) == [30, 20, 10] and p.synthetic.counts(3) == [30, 0, 0]
    p = plan(ratio=1.0, ratio_classes=["CNV"])
    assert p.real.counts(3) == [0, 20, 10] and p.synthetic.counts(3) == [30, 0, 0]


def test_bad_ratio_classes() -> None:
    with pytest.raises(ConfigError, match="unknown class 'AMD'"):
        plan(ratio=0.5, ratio_mode="replace", ratio_classes=["AMD"])
    with pytest.raises(ConfigError, match="needs the class names"):
        plan_mix(MixConfig(policy="ratio", ratio_classes=["CNV"]), REAL, SYN, 3, seed=0)
    with pytest.raises(ValidationError, match="twice"):
        MixConfig(ratio_classes=["CNV", "CNV"])
    with pytest.raises(ValidationError):
        MixConfig(ratio_mode="swap")


def test_default_add_mode_is_unchanged() -> None:
    """Naming every class in add mode draws exactly what the default (no ratio_classes) draws."""
    a = plan(ratio=0.4)
    b = plan(ratio=0.4, ratio_classes=list(NAMES))
    assert a.real.ids == b.real.ids and a.synthetic.ids == b.synthetic.ids
    assert np.array_equal(a.synthetic.labels, b.synthetic.labels)
