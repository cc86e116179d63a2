"""The accuracy floor's certificate (exitflow.dse.risk): valid p-values, family-wise control."""

import numpy as np
import pytest
from scipy.special import gammaln, xlogy
from scipy.stats import binom

from exitflow.dse import risk


def _trinomial(n, p_loss, p_gain):
    """Every (losses, gains) outcome of n samples with its probability."""
    ll, gg = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
    ok = ll + gg <= n
    ll, gg = ll[ok], gg[ok]
    rest = n - ll - gg
    log_p = (
        gammaln(n + 1)
        - gammaln(ll + 1)
        - gammaln(gg + 1)
        - gammaln(rest + 1)
        + xlogy(ll, p_loss)
        + xlogy(gg, p_gain)
        + xlogy(rest, 1 - p_loss - p_gain)
    )
    return ll, gg, np.exp(log_p)


@pytest.fixture(scope="module")
def p_values_n60():
    """The p-value of every outcome of 60 samples at a 5 % floor and delta 0.1."""
    n, floor = 60, 0.05
    ll, gg, _ = _trinomial(n, 0.1, 0.1)
    p = np.array([risk.drop_p_value(int(a), int(b), n, floor, 0.1) for a, b in zip(ll, gg, strict=True)])
    return n, floor, {(int(a), int(b)): v for a, b, v in zip(ll, gg, p, strict=True)}


@pytest.mark.parametrize("p_gain", [0.0, 0.01, 0.03, 0.08, 0.2])
@pytest.mark.parametrize("excess", [0.0, 0.03])  # on the null's boundary and inside it
def test_drop_p_value_is_valid_exactly(p_values_n60, p_gain, excess):
    """Under a drop above the floor, P(p <= u) <= u, summed over every outcome (no simulation)."""
    n, floor, p_of = p_values_n60
    ll, gg, prob = _trinomial(n, p_gain + floor + excess, p_gain)
    p = np.array([p_of[(int(a), int(b))] for a, b in zip(ll, gg, strict=True)])
    for u in (0.02, 0.05, 0.1, 0.2):
        assert prob[p <= u].sum() <= u + 1e-9, (p_gain, excess, u)


def test_drop_p_value_has_power_where_the_drop_is_well_below_the_floor(p_values_n60):
    n, floor, p_of = p_values_n60
    assert p_of[(0, 0)] <= 0.1  # nothing differs from the final exit in 60 samples: certified at 5 %
    gamma = risk.GAMMA_SHARE * 0.1  # spent on the gain probability's bound: no p-value is below it
    assert gamma < risk.drop_p_value(2, 1, 1000, 0.01, 0.1) < gamma + 0.01
    # more losses (same gains) never make a design look safer
    row = [risk.drop_p_value(k, 3, 500, 0.01, 0.1) for k in range(0, 15)]
    assert row == sorted(row) and row[0] < 0.1 < row[-1]


def test_drop_p_value_rejects_impossible_counts():
    with pytest.raises(ValueError, match="losses \\+ gains <= n"):
        risk.drop_p_value(5, 6, 10, 0.01, 0.1)
    with pytest.raises(ValueError, match="max_drop"):
        risk.drop_p_value(0, 0, 10, 1.5, 0.1)


def test_error_p_value_is_the_binomial_tail():
    assert risk.error_p_value(3, 100, 0.05) == pytest.approx(binom.cdf(3, 100, 0.05))
    with pytest.raises(ValueError):
        risk.error_p_value(11, 10, 0.05)


def test_split_is_random_fixed_and_disjoint():
    a, b = risk.split(1000)
    assert len(a) == round(risk.ORDER_FRACTION * 1000) and len(a) + len(b) == 1000
    assert not set(a) & set(b)
    assert np.array_equal(a, risk.split(1000)[0])
    assert not np.array_equal(a, np.arange(len(a)))  # not the first samples


def _population(rng, drops, rate=0.03, n=1500):
    """Validation outcomes of configurations with known true drops: the final exit is right
    with probability 0.95; each configuration gains (right where the final exit is wrong) with
    probability ``rate`` and loses (wrong where it is right) with probability ``rate + drop``."""
    final = rng.random(n) < 0.95
    correct = np.empty((len(drops), n), dtype=bool)
    for k, d in enumerate(drops):
        u = rng.random(n)
        correct[k] = np.where(final, u >= (rate + d) / 0.95, u < rate / 0.05)
    return final, correct


def test_certify_controls_the_family_wise_error():
    """Configurations with true drops from 0 to 3 pp (1 pp floor): over 200 draws of the
    validation data, a configuration above the floor is certified in at most 10 % of them (with
    the binomial test's slack), and designs below the floor are certified in most."""
    drops = np.linspace(0.0, 0.03, 31)
    rng = np.random.default_rng(7)
    wrong, certified_safe = 0, 0
    draws = 200
    for _ in range(draws):
        final, correct = _population(rng, drops, rate=0.01)
        work = np.broadcast_to(-drops[:, None], correct.shape)  # a larger drop: less work
        cert = risk.certify(correct, final, work, risk.Floor(max_drop=0.01), 0.9)
        true_drop = {k: drops[k] for k in cert.certified}
        wrong += any(d > 0.01 + 1e-12 for d in true_drop.values())
        certified_safe += any(d <= 0.004 for d in true_drop.values())
    assert wrong / draws <= 0.1 + 2.33 * np.sqrt(0.1 * 0.9 / draws)
    assert certified_safe / draws >= 0.5


def test_certify_certifies_a_prefix_and_skips_what_it_is_told():
    rng = np.random.default_rng(3)
    final, correct = _population(rng, np.linspace(0, 0.04, 9), rate=0.005, n=3000)
    work = np.broadcast_to(-np.arange(9.0)[:, None], correct.shape)
    cert = risk.certify(correct, final, work, risk.Floor(max_drop=0.01), 0.9, exclude=[0])
    assert 0 not in cert.tested and 0 not in cert.p_values
    passed = [i for i in cert.tested if cert.p_values[i] <= 0.1]
    assert set(passed) == set(cert.certified)
    # the sequence stops at the first configuration not rejected
    assert all(cert.p_values[i] <= 0.1 for i in cert.tested[:-1])
    assert len(cert.tested) < 8 and cert.p_values[cert.tested[-1]] > 0.1
    with pytest.raises(ValueError, match="confidence"):
        risk.certify(correct, final, work, risk.Floor(max_drop=0.01), 1.0)


def test_sequence_orders_by_disagreements_then_most_work():
    order = risk.sequence(np.array([2, 0, 0, 1]), np.array([5.0, 1.0, 3.0, 9.0]), np.zeros(4))
    assert order.tolist() == [2, 1, 3, 0]


def test_absolute_floor_uses_the_errors():
    rng = np.random.default_rng(5)
    final = np.ones(2000, dtype=bool)
    correct = np.stack([rng.random(2000) < a for a in (0.99, 0.97, 0.90)])
    work = np.broadcast_to(np.array([[3.0], [2.0], [1.0]]), correct.shape)
    cert = risk.certify(correct, final, work, risk.Floor(max_drop=None, min_accuracy=0.95), 0.9)
    assert 0 in cert.certified and 1 in cert.certified and 2 not in cert.certified
