"""Risk control for the accuracy floor: the chosen design keeps it with a stated confidence.

Choosing the fastest of thousands of designs whose *validation* drop sits at the floor selects
the lucky ones (the winner's curse): their drop on new data is larger. exitflow therefore
certifies the threshold configurations (exits kept and a threshold per exit) before the search
picks among them, in the Learn-then-Test framework (Angelopoulos, Bates, Candès, Jordan, Lei,
"Learn then Test", 2021), its hypotheses ordered on a split of their own as in Pareto testing
(Laufer-Goldshtein, Fisch, Barzilay, Jaakkola, 2023):

1. The validation samples are split at random (fixed seed) into an *ordering* part
   (:data:`ORDER_FRACTION`) and a *testing* part.
2. On the ordering part only, each configuration gets the number of samples whose exit names
   another class than the final exit (every loss and every gain is one of them) and its
   expected work per sample (bit operations of the stages and heads each sample runs through).
   The configurations are ordered by disagreements, fewest first, then by work, most first
   (:func:`sequence`).
3. In that order, each configuration's null hypothesis "its drop exceeds the floor" is
   tested on the testing part with a valid p-value (:func:`drop_p_value`) at level
   ``delta = 1 - confidence``; the first one not rejected ends the sequence (fixed-sequence
   testing). Every configuration rejected before it is *certified*.

Fixed-sequence testing controls the family-wise error: with probability at least ``confidence``
over the draw of the validation data, every certified configuration has a true drop (on the
distribution the validation samples come from) at most the floor, however many configurations
there are. The search may then pick any certified configuration by any rule, its speed included,
without losing the guarantee. The order must not depend on the testing part; it is computed from
the ordering part alone, and the work proxy uses no labels.

The p-value of one configuration (:func:`drop_p_value`) is exact for the paired outcome of each
sample (the final exit right and the design wrong: a loss; the reverse: a gain; else nothing),
whose three probabilities are unknown: it is the largest probability, over the null boundary
``p_loss - p_gain = floor`` with ``p_gain`` inside a ``1 - gamma`` Clopper-Pearson bound, of a
studentised drop statistic at most the observed one, plus ``gamma`` (Berger and Boos, 1994). A
floor on the accuracy itself (``--min-accuracy``) uses the exact binomial test on the errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import gammaln, xlogy
from scipy.stats import beta, binom

DEFAULT_CONFIDENCE = 0.9
METHOD = (
    "Learn-then-Test: fixed-sequence testing in the ordering split's order "
    "(disagreements with the final exit, then work), "
    "exact Berger-Boos p-values on the testing split"
)
ORDER_FRACTION = 0.2  # of the validation samples: they order the hypotheses, the rest tests them
GAMMA_SHARE = 0.1  # of delta: spent on the bound on the gain probability (Berger-Boos)
NUISANCE_POINTS = 64  # values of the gain probability the supremum is taken over
TAIL = 1e-12  # probability mass left outside the enumerated box, added to every p-value
SEED = 0  # of the ordering/testing split: the same profile gives the same certificate


def _statistic(losses: np.ndarray, gains: np.ndarray, n: int, max_drop: float) -> np.ndarray:
    """Studentised drop: (losses - gains - n*floor) / sqrt(losses + gains), the root at least
    sqrt(n*floor), the least the null hypothesis makes losses + gains on average (smaller
    counts make the statistic swing wildly where the losses are rare). Increasing in ``losses``
    (so a larger loss probability only makes it larger)."""
    c = n * max_drop
    return (losses - gains - c) / np.sqrt(np.maximum(losses + gains, max(c, 1.0)))


def drop_p_value(losses: int, gains: int, n: int, max_drop: float, delta: float) -> float:
    """A valid p-value for "the drop exceeds ``max_drop``" (a fraction) from ``n`` paired samples
    with ``losses`` samples the final exit gets right and the design wrong and ``gains`` the
    reverse; ``delta`` sets the share spent on the nuisance bound (``GAMMA_SHARE * delta``).

    Under the null hypothesis, ``P(p <= u) <= u`` for every ``u``: the null's worst case for the
    statistic is on its boundary (the statistic grows with the losses), and the gain
    probability is either outside its Clopper-Pearson bound (probability at most gamma) or
    inside, where the supremum is taken (on a grid of :data:`NUISANCE_POINTS` values)."""
    if not (0 <= losses and 0 <= gains and losses + gains <= n):
        raise ValueError(f"need 0 <= losses, gains and losses + gains <= n; got {losses}, {gains}, {n}")
    if not 0.0 <= max_drop < 1.0:
        raise ValueError(f"max_drop must be a fraction in [0, 1); got {max_drop}")
    gamma = GAMMA_SHARE * delta
    upper = 1.0 if gains >= n else float(beta.ppf(1.0 - gamma, gains + 1, n - gains))
    top = min(upper, (1.0 - max_drop) / 2.0)
    nuisance = np.linspace(0.0, top, NUISANCE_POINTS)
    observed = _statistic(np.array(losses), np.array(gains), n, max_drop)
    # a box of (losses, gains) holding all but TAIL of the mass at the largest probabilities
    l_max = int(binom.ppf(1.0 - TAIL / 2, n, top + max_drop)) + 1
    g_max = int(binom.ppf(1.0 - TAIL / 2, n, top)) + 1
    ll, gg = np.meshgrid(np.arange(l_max + 1), np.arange(g_max + 1), indexing="ij")
    valid = ll + gg <= n
    below = valid & (_statistic(ll, gg, n, max_drop) <= observed)
    ll, gg = ll[below], gg[below]
    if ll.size == 0:
        return min(1.0, gamma + TAIL)
    rest = n - ll - gg
    log_count = gammaln(n + 1) - gammaln(ll + 1) - gammaln(gg + 1) - gammaln(rest + 1)
    worst = 0.0
    for p_gain in nuisance:
        p_loss = p_gain + max_drop
        log_p = log_count + xlogy(ll, p_loss) + xlogy(gg, p_gain) + xlogy(rest, 1.0 - p_loss - p_gain)
        worst = max(worst, float(np.exp(log_p).sum()))
    return min(1.0, worst + gamma + TAIL)


def error_p_value(errors: int, n: int, max_error: float) -> float:
    """The exact binomial p-value for "the error rate exceeds ``max_error``" from ``errors`` of
    ``n`` samples (a floor on the accuracy itself, ``--min-accuracy``)."""
    if not 0 <= errors <= n:
        raise ValueError(f"need 0 <= errors <= n; got {errors} of {n}")
    return float(binom.cdf(errors, n, max_error))


def split(n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(ordering indices, testing indices) of ``n`` validation samples, at random."""
    order = np.random.default_rng(seed).permutation(n)
    k = int(round(ORDER_FRACTION * n))
    return np.sort(order[:k]), np.sort(order[k:])


@dataclass(frozen=True)
class Floor:
    """The accuracy floor: at most ``max_drop`` (a fraction) below the final exit, or an absolute
    ``min_accuracy`` (then ``max_drop`` is None)."""

    max_drop: float | None = 0.01
    min_accuracy: float | None = None

    def __post_init__(self) -> None:
        if (self.max_drop is None) == (self.min_accuracy is None):
            raise ValueError("an accuracy floor is either a drop or a minimum accuracy")

    def score(self, correct: np.ndarray, final: np.ndarray) -> np.ndarray:
        """How safe each configuration (rows of ``correct``) looks on these samples, lower is
        safer (:meth:`score_counts`)."""
        return self.score_counts(*paired_counts(correct, final), correct.shape[1])

    def score_counts(self, losses: np.ndarray, gains: np.ndarray, errors: np.ndarray, n: int) -> np.ndarray:
        """:meth:`score` from each configuration's counts on ``n`` samples (:func:`paired_counts`):
        the normal approximation of the test statistic, the drop (or error rate) less the floor
        in standard errors. It orders the hypotheses, so it needs no exactness."""
        if self.max_drop is not None:
            losses, gains = np.asarray(losses), np.asarray(gains)
            return (losses - gains - n * self.max_drop) / np.sqrt(np.maximum(losses + gains, 1))
        limit = 1.0 - self.min_accuracy
        return (np.asarray(errors) - n * limit) / np.sqrt(max(n * limit * (1.0 - limit), 1e-12))

    def p_value_counts(self, losses: int, gains: int, errors: int, n: int, delta: float) -> float:
        """:meth:`p_value` from one configuration's counts on ``n`` samples."""
        if self.max_drop is not None:
            return drop_p_value(int(losses), int(gains), n, self.max_drop, delta)
        return error_p_value(int(errors), n, 1.0 - self.min_accuracy)

    def p_value(self, correct: np.ndarray, final: np.ndarray, delta: float) -> float:
        losses, gains, errors = paired_counts(np.asarray(correct)[None, :], final)
        return self.p_value_counts(losses[0], gains[0], errors[0], len(final), delta)


def paired_counts(correct: np.ndarray, final: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per configuration (rows of ``correct``, configurations x samples): its losses (the final
    exit right, the configuration wrong), gains (the reverse) and errors."""
    correct, final = np.asarray(correct, bool), np.asarray(final, bool)
    losses = np.count_nonzero(final[None, :] & ~correct, axis=1)
    gains = np.count_nonzero(~final[None, :] & correct, axis=1)
    return losses, gains, np.count_nonzero(~correct, axis=1)


@dataclass(frozen=True)
class Certificate:
    """What the fixed-sequence test found: the configurations tested in order with their
    p-values, and the certified ones (a prefix of that order)."""

    confidence: float
    floor: Floor
    ordering_samples: int
    testing_samples: int
    tested: tuple[int, ...]  # configuration indices, in the order tested
    p_values: dict = field(default_factory=dict)  # configuration index -> p-value
    certified: frozenset = frozenset()  # configuration indices

    @property
    def delta(self) -> float:
        return 1.0 - self.confidence


def sequence(disagreements: np.ndarray, work: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The order of the fixed-sequence test: fewest disagreements with the final exit first (a
    loss or a gain needs one), then most work (fewer samples leave early), then the safety
    score. Every configuration is in it. The counts come from a few hundred samples, where
    losses alone are too rare to order by: ordered by their losses (or by a Pareto chain of
    drop and work), the configuration that looked safest by luck is tested first and, failing
    on the testing part, ends the sequence (benchmark ``guarantee`` compared these orders)."""
    return np.lexsort((score, -np.asarray(work), np.asarray(disagreements)))


def certify(
    correct: np.ndarray,
    final: np.ndarray,
    work: np.ndarray,
    floor: Floor,
    confidence: float,
    seed: int = SEED,
    exclude=(),
    disagree: np.ndarray | None = None,
) -> Certificate:
    """Certify configurations (rows) from their per-sample correctness on the validation split
    (``correct``, configurations x samples), the final exit's (``final``) and each sample's work
    under each configuration (``work``, configurations x samples: bit operations it runs).
    ``exclude``: configurations left out of the sequence (those known to keep the floor).
    ``disagree`` (configurations x samples): where the exit a sample takes names another class
    than the final exit (default: where the two differ in being right).

    The order (:func:`sequence`) comes from the ordering part alone (:func:`certify_counts`)."""
    correct, final, work = np.asarray(correct, bool), np.asarray(final, bool), np.asarray(work, float)
    ordering, testing = split(len(final), seed)
    if disagree is None:
        disagree = correct != final[None, :] if floor.max_drop is not None else ~correct
    return certify_counts(
        Counts(
            disagreements=np.count_nonzero(np.asarray(disagree, bool)[:, ordering], axis=1),
            work=work[:, ordering].mean(axis=1),
            paired=paired_counts(correct[:, ordering], final[ordering]),
            samples=len(ordering),
        ),
        Counts(paired=paired_counts(correct[:, testing], final[testing]), samples=len(testing)),
        floor,
        confidence,
        exclude,
    )


@dataclass(frozen=True)
class Counts:
    """What certifying needs of each configuration on one part of the validation samples:
    ``paired`` (losses, gains, errors; :func:`paired_counts`), and on the ordering part also the
    samples whose exit names another class than the final exit and the mean work per sample."""

    paired: tuple[np.ndarray, np.ndarray, np.ndarray]
    samples: int
    disagreements: np.ndarray | None = None
    work: np.ndarray | None = None


def certify_counts(ordering: Counts, testing: Counts, floor: Floor, confidence: float, exclude=()) -> Certificate:
    """Certify configurations from their counts on the ordering and the testing part of the
    validation samples (:func:`split`): ordered by :func:`sequence` on the ordering part, each
    tested on the testing part, the first not rejected ending the sequence. ``exclude``:
    configurations left out of the sequence (those known to keep the floor)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1) for a certificate; got {confidence}")
    configurations = len(ordering.disagreements)
    left = np.setdiff1d(np.arange(configurations), np.asarray(list(exclude), dtype=np.int64))
    order = sequence(
        np.asarray(ordering.disagreements)[left],
        np.asarray(ordering.work)[left],
        floor.score_counts(*ordering.paired, ordering.samples)[left],
    )
    delta = 1.0 - confidence
    losses, gains, errors = testing.paired
    p_values, certified, tested = {}, [], []
    for i in left[order].tolist():
        p = floor.p_value_counts(losses[i], gains[i], errors[i], testing.samples, delta)
        p_values[i] = p
        tested.append(i)
        if p > delta:
            break
        certified.append(i)
    return Certificate(
        confidence, floor, ordering.samples, testing.samples, tuple(tested), p_values, frozenset(certified)
    )
