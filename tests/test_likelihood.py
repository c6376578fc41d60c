"""The likelihood estimators against the truth, on a toy problem where the truth is computable.

The toy: a context token (A or B) followed by a continuation over the vocabulary {0, 1} of length
0..4 (31 sequences), with a known distribution p(y | c) per context. Everything about it can be
enumerated:

- the **exact rates** (:class:`ExactRates`): the Bayes-optimal FlexMDM, i.e. the expected gap of
  every slot and the posterior of every masked token given x_t and t, from the posterior over the
  data and over the alignments of x_t into each sequence. With them the FlexMDM bound is tight:
  its estimate must equal -log p(y | c) within Monte Carlo error;
- the **exact NLL of any FlexMDM** (:func:`exact_model_nll`): the model's continuous-time Markov
  chain solved on the (finite) set of states that can still become a continuation of length <= 4,
  so the bound can be checked to lie above the truth for models that are not the exact one (a
  tiny network trained here, and the exact rates of a schedule whose reference process differs).

``python tests/test_likelihood.py`` prints the variance-vs-mc_num table of docs/likelihood.md.
"""

from __future__ import annotations

import itertools
import math
import sys
import time

import pytest
import torch
from torch import Tensor, nn

from retrofit.interpolant import forward_process, sample_times
from retrofit.likelihood import (
    LikelihoodEstimate,
    expected_log_rate,
    flexmdm_log_likelihood,
    importance_times,
    mdm_log_likelihood,
    mdm_mask_counts,
    reference_schedule,
)
from retrofit.objective import flexmdm_loss
from retrofit.schedules import RATE_FACTOR_MIN_DENOMINATOR, Schedule, get_schedule

# Vocabulary of the toy: data tokens 0 and 1, the mask, a pad, and two context tokens A and B.
ZERO, ONE, MASK, PAD, CONTEXT_A, CONTEXT_B = range(6)
VOCAB = 6
MAX_LENGTH = 4  # longest continuation
CONTINUATIONS = [
    tuple(y) for n in range(MAX_LENGTH + 1) for y in itertools.product((ZERO, ONE), repeat=n)
]
# x_t's continuation part: sequences over {0, 1, MASK} of length 0..4 (121 states).
STATES = [
    tuple(s) for n in range(MAX_LENGTH + 1) for s in itertools.product((ZERO, ONE, MASK), repeat=n)
]
STATE_INDEX = {state: index for index, state in enumerate(STATES)}


def toy_distributions(seed: int = 0) -> dict[int, Tensor]:
    """p(y | c) for c in (A, B): (31,) float64 each, uneven random weights (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    distributions = {}
    for context in (CONTEXT_A, CONTEXT_B):
        weights = torch.rand(len(CONTINUATIONS), generator=generator, dtype=torch.float64) ** 3
        distributions[context] = weights / weights.sum()
    return distributions


def _alignment_tables() -> tuple[Tensor, Tensor, Tensor]:
    """Alignments of every state into every continuation (order-preserving embeddings in which a
    clean token matches): counts (S, Y); summed gap of each slot (S, Y, 5); summed one-hot token
    under each position (S, Y, 4, 2)."""
    counts = torch.zeros(len(STATES), len(CONTINUATIONS), dtype=torch.float64)
    gap_sums = torch.zeros(len(STATES), len(CONTINUATIONS), MAX_LENGTH + 1, dtype=torch.float64)
    token_sums = torch.zeros(len(STATES), len(CONTINUATIONS), MAX_LENGTH, 2, dtype=torch.float64)
    for s, state in enumerate(STATES):
        for y, data in enumerate(CONTINUATIONS):
            for positions in itertools.combinations(range(len(data)), len(state)):
                if any(token not in (MASK, data[p]) for token, p in zip(state, positions)):
                    continue
                counts[s, y] += 1
                bounds = (-1, *positions, len(data))
                for slot in range(len(state) + 1):
                    gap_sums[s, y, slot] += bounds[slot + 1] - bounds[slot] - 1
                for index, p in enumerate(positions):
                    token_sums[s, y, index, data[p]] += 1
    return counts, gap_sums, token_sums


ALIGNMENT_COUNTS, GAP_SUMS, TOKEN_SUMS = _alignment_tables()
STATE_LENGTHS = torch.tensor([len(s) for s in STATES], dtype=torch.float64)
CONTINUATION_LENGTHS = torch.tensor([len(y) for y in CONTINUATIONS], dtype=torch.float64)


class ExactRates:
    """The Bayes-optimal FlexMDM of the toy: the model call protocol of retrofit.likelihood.

    Rows are ``[context, x_t's continuation...]``. For the state s at time t the posterior over
    continuations is ``p(y | c) * #alignments(s, y) * (1 - alpha(t))^(|y| - |s|)`` (each token is
    absent independently with probability 1 - alpha(t); the mask / clean factors are the same for
    every y and cancel), and within y the alignments are equally likely. ``gap_scale`` and
    ``temperature`` distort the rates (a model that is not the exact one).
    """

    def __init__(
        self,
        distributions: dict[int, Tensor],
        insertion: Schedule | str = "linear",
        *,
        gap_scale: float = 1.0,
        temperature: float = 1.0,
    ) -> None:
        self.distributions = distributions
        self.insertion = get_schedule(insertion)
        self.gap_scale = gap_scale
        self.temperature = temperature

    def rates(self, contexts: Tensor, states: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(B,) contexts, (B,) state indices, (B,) times -> gaps (B, 5), token probs (B, 4, 2)."""
        absent = self.insertion.one_minus_at(t.double())  # (B,)
        prior = torch.stack([self.distributions[int(c)] for c in contexts])  # (B, Y)
        missing = CONTINUATION_LENGTHS[None, :] - STATE_LENGTHS[states][:, None]  # (B, Y)
        counts = ALIGNMENT_COUNTS[states]  # (B, Y)
        weights = prior * counts * absent[:, None].pow(missing.clamp_min(0))  # (B, Y)
        weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1e-300)
        per_alignment = weights / counts.clamp_min(1)  # (B, Y)
        gaps = torch.einsum("by,byj->bj", per_alignment, GAP_SUMS[states])
        tokens = torch.einsum("by,byjv->bjv", per_alignment, TOKEN_SUMS[states])
        return gaps * self.gap_scale, tokens

    def __call__(self, input_ids, lengths, t, logits_positions=None):
        batch_size, width = input_ids.shape
        states = torch.tensor(
            [STATE_INDEX[tuple(row[1:n])] for row, n in zip(input_ids.tolist(), lengths.tolist())]
        )
        gap_table, token_table = self.rates(input_ids[:, 0], states, t)
        gaps = torch.zeros(batch_size, width + 1, dtype=torch.float64)
        gaps[:, 1 : MAX_LENGTH + 2] = gap_table[:, : width]
        logits = torch.full((batch_size, width, VOCAB), -math.inf, dtype=torch.float64)
        log_probs = torch.log(token_table.clamp_min(1e-300)) / self.temperature  # (B, 4, 2)
        logits[:, 1 : MAX_LENGTH + 1, :2] = log_probs[:, : width - 1]
        logits[:, 0, 0] = 0.0  # the context position is never scored; keep its row finite
        if logits_positions is None:
            return logits, gaps
        return logits[logits_positions], gaps


def nll(distributions: dict[int, Tensor], context: int, continuation: tuple[int, ...]) -> float:
    """-log p(continuation | context) of the toy distribution."""
    return -math.log(float(distributions[context][CONTINUATIONS.index(continuation)]))


# ---------------------------------------------------------------------------------------------
# The exact NLL of a FlexMDM: its Markov chain solved on the toy's states
# ---------------------------------------------------------------------------------------------


def _transitions() -> tuple[Tensor, Tensor]:
    """Index tensors of the chain's moves between states of length <= 4.

    Insertions (K, 3): (state, slot, next state); unmaskings (M, 4): (state, position, token,
    next state). An insertion into a length-4 state leaves the set (it can never become a
    continuation of length <= 4): it is an exit, as is unmasking to a token other than 0 or 1.
    """
    insertions, unmaskings = [], []
    for s, state in enumerate(STATES):
        if len(state) < MAX_LENGTH:
            for slot in range(len(state) + 1):
                insertions.append((s, slot, STATE_INDEX[(*state[:slot], MASK, *state[slot:])]))
        for position, token in enumerate(state):
            if token == MASK:
                for value in (ZERO, ONE):
                    grown = (*state[:position], value, *state[position + 1 :])
                    unmaskings.append((s, position, value, STATE_INDEX[grown]))
    return torch.tensor(insertions), torch.tensor(unmaskings)


INSERTIONS, UNMASKINGS = _transitions()
STATE_ROWS = torch.full((len(STATES), 1 + MAX_LENGTH), PAD, dtype=torch.long)
for _index, _state in enumerate(STATES):
    STATE_ROWS[_index, 1 : 1 + len(_state)] = torch.tensor(_state, dtype=torch.long)
SLOT_VALID = torch.arange(2 + MAX_LENGTH)[None, :] <= 1 + STATE_LENGTHS.long()[:, None]
SLOT_VALID[:, 0] = False  # the slot before the context is never an answer slot
MASK_COUNTS = (STATE_ROWS == MASK).sum(dim=1).double()


def _generator_matrix(
    model, context: int, t: float, insertion: Schedule, unmasking: Schedule, clamp: float
) -> Tensor:
    """Q(t) (S, S) of the model's chain, exits as missing row mass. Rates: insertion into answer
    slot j kappa_a(t) ghat_j, unmasking position j to v kappa_b(t) pi_j(v), pi the softmax over
    every token but the mask (tokens other than 0 / 1 lead out of the set)."""
    rows = STATE_ROWS.clone()
    rows[:, 0] = context
    lengths = 1 + STATE_LENGTHS.long()
    times = torch.full((len(STATES),), t, dtype=torch.float64)
    logits, gaps = model(rows, lengths, times)
    probs = torch.softmax(logits.double().index_fill(-1, torch.tensor([MASK]), -math.inf), dim=-1)
    gaps = gaps.double().clamp_min(0.0) * SLOT_VALID  # (S, 6)
    time = torch.tensor(t, dtype=torch.float64)
    insert_rate = float(insertion.rate_factor(time, min_denominator=clamp))
    unmask_rate = float(unmasking.rate_factor(time, min_denominator=clamp))
    generator = torch.zeros(len(STATES), len(STATES), dtype=torch.float64)
    source, slot, target = INSERTIONS.unbind(1)
    generator.index_put_((source, target), insert_rate * gaps[source, 1 + slot], accumulate=True)
    source, position, value, target = UNMASKINGS.unbind(1)
    moves = unmask_rate * probs[source, 1 + position, value]
    generator.index_put_((source, target), moves, accumulate=True)
    # Leaving the state: every insertion (also beyond length 4) and every unmasking (any token).
    generator.diagonal().sub_(insert_rate * gaps.sum(dim=1) + unmask_rate * MASK_COUNTS)
    return generator


def exact_model_nll(
    model,
    context: int,
    insertion: Schedule | str,
    unmasking: Schedule | str,
    *,
    clamp: float = RATE_FACTOR_MIN_DENOMINATOR,
    steps: int = 400,
) -> dict[tuple[int, ...], float]:
    """-log P(X_1 = y | context) for every continuation y: the model's chain (rate factors
    clamped at ``clamp`` as in the estimator) from the context alone at t = 0 to t = 1 (matrix
    exponential of Q at each step's midpoint, steps uniform in u = -ln(1 - t) up to 1 - t = 1e-13,
    where rates ~ 1 / (1 - t) are smooth; 400 steps: error < 5e-3 nats on this toy)."""
    insertion, unmasking = get_schedule(insertion), get_schedule(unmasking)
    grid = torch.linspace(0.0, 30.0, steps + 1, dtype=torch.float64)
    times = (1.0 - torch.exp(-grid)).tolist()
    times[-1] = 1.0
    probability = torch.zeros(len(STATES), dtype=torch.float64)
    probability[STATE_INDEX[()]] = 1.0
    with torch.no_grad():
        for start, end in itertools.pairwise(times):
            middle = 0.5 * (start + end)
            generator = _generator_matrix(model, context, middle, insertion, unmasking, clamp)
            probability = probability @ torch.linalg.matrix_exp(generator * (end - start))
    return {y: -math.log(max(float(probability[STATE_INDEX[y]]), 1e-300)) for y in CONTINUATIONS}


# ---------------------------------------------------------------------------------------------
# Tests: schedules of the reference process
# ---------------------------------------------------------------------------------------------


def test_expected_log_rate_matches_closed_forms():
    assert expected_log_rate("linear") == pytest.approx(1.0, abs=1e-9)
    for p in (0.5, 2.0, 3.0):  # E[ln kappa] = ln p + 1 / p for a = t^p
        assert expected_log_rate(f"poly({p})") == pytest.approx(math.log(p) + 1 / p, abs=1e-6)
    # Monte Carlo check of the definition for a schedule without a closed form here.
    schedule = get_schedule("cosine")
    u = (torch.arange(200_000, dtype=torch.float64) + 0.5) / 200_000
    times = schedule.inverse(u)
    rates = schedule.derivative(times) / schedule.one_minus_at(times)
    assert expected_log_rate("cosine") == pytest.approx(float(torch.log(rates).mean()), abs=2e-3)


def test_reference_schedule_rescales_only_schedules_that_do_not_span_zero_to_one():
    assert reference_schedule("linear") == get_schedule("linear")
    geometric = reference_schedule("geometric(10, 0.01)")
    ends = geometric.at(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert ends.tolist() == pytest.approx([0.0, 1.0], abs=1e-12)
    t = torch.tensor([0.2, 0.7], dtype=torch.float64)
    assert geometric.inverse(geometric.at(t)).tolist() == pytest.approx(t.tolist(), abs=1e-9)
    assert (geometric.one_minus_at(t) + geometric.at(t)).tolist() == pytest.approx([1.0, 1.0])


def test_importance_times_integrate_exactly():
    times, weights = importance_times(4096, torch.Generator().manual_seed(0))
    assert bool(((times >= 0) & (times < 1)).all())
    # weight = 1 / density: the weighted mean of f(t) estimates int_0^1 f.
    assert float(weights.mean()) == pytest.approx(1.0, abs=1e-3)
    assert float((weights * times**2).mean()) == pytest.approx(1 / 3, abs=1e-3)
    assert float((weights / (1 - times).sqrt()).mean()) == pytest.approx(2.0, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# Tests: the FlexMDM bound is tight with the exact rates
# ---------------------------------------------------------------------------------------------

TIGHTNESS_REQUESTS = [
    (CONTEXT_A, (ZERO, ONE, ONE)),
    (CONTEXT_A, ()),
    (CONTEXT_B, (ONE, ZERO, ZERO, ONE)),
    (CONTEXT_A, (ONE, ONE, ZERO, ZERO)),
]
# The exact rates are the data's process only without the training clamp of the rate factor.
UNCLAMPED = 1e-12


def _pooled_z(estimates: list[LikelihoodEstimate], truths: list[float], shift: list[float]) -> float:
    """z-score of sum(estimated NLL + shift - truth) under the estimates' standard errors."""
    error = sum(-e.log_likelihood + d - t for e, t, d in zip(estimates, truths, shift))
    return error / math.sqrt(sum(e.stderr**2 for e in estimates))


@pytest.mark.parametrize("insertion, unmasking", [("linear", "linear"), ("poly(2)", "cosine")])
def test_flexmdm_bound_is_tight_with_exact_rates(insertion, unmasking):
    distributions = toy_distributions()
    model = ExactRates(distributions, insertion)
    requests = [((context,), continuation) for context, continuation in TIGHTNESS_REQUESTS]
    estimates = flexmdm_log_likelihood(
        model, requests, insertion=insertion, unmasking=unmasking, mask_token_id=MASK,
        pad_token_id=PAD, mc_num=4000, batch_size=4000, min_rate_denominator=UNCLAMPED,
    )  # fmt: skip
    truths = [nll(distributions, c, y) for c, y in TIGHTNESS_REQUESTS]
    for (context, continuation), estimate, truth in zip(TIGHTNESS_REQUESTS, estimates, truths):
        assert estimate.num_tokens == len(continuation) and estimate.stderr < 0.25
        assert -estimate.log_likelihood == pytest.approx(truth, abs=4 * estimate.stderr), (
            context, continuation, truth, estimate,
        )
    assert abs(_pooled_z(estimates, truths, [0.0] * 4)) < 4
    if insertion != "linear":
        # The power of the check: leaving out the insertion path entropy's schedule constant
        # (n (E[ln kappa] - 1), 0.19 nats per token for poly(2)) is detected.
        constant = expected_log_rate(insertion) - 1.0
        shift = [-len(y) * constant for _, y in TIGHTNESS_REQUESTS]
        assert abs(_pooled_z(estimates, truths, shift)) > 4


def test_training_loss_alone_is_not_the_likelihood():
    """The constants matter: without the path entropy (the -g ln g term training drops) the
    estimate misses -log p by far more than its Monte Carlo error."""
    distributions = toy_distributions()
    model = ExactRates(distributions)
    request = ((CONTEXT_B,), (ONE, ZERO, ZERO, ONE))
    generator = torch.Generator().manual_seed(1)
    n = 4000
    times = sample_times(n, generator=generator, stratified=True, eps=1e-4)
    x1 = torch.tensor([[*request[0], *request[1]]] * n)
    protected = torch.zeros_like(x1, dtype=torch.bool)
    protected[:, 0] = True
    batch = forward_process(
        x1, torch.full((n,), x1.shape[1]), protected, times, insertion="linear",
        unmasking="linear", mask_token_id=MASK, pad_token_id=PAD, generator=generator,
    )  # fmt: skip
    logits, gaps = model(batch.input_ids, batch.lengths, batch.t, batch.is_mask)
    loss = flexmdm_loss(
        logits, gaps.float(), batch, insertion="linear", unmasking="linear", denominator=float(n)
    )  # the training loss per sequence: sum over the batch / n
    truth = nll(distributions, CONTEXT_B, (ONE, ZERO, ZERO, ONE))
    assert abs(float(loss.loss) - truth) > 2.0


# ---------------------------------------------------------------------------------------------
# Tests: the bound lies above the exact NLL of models that are not the exact one
# ---------------------------------------------------------------------------------------------


def test_exact_chain_solver_recovers_the_data_with_exact_rates():
    distributions = toy_distributions()
    model = ExactRates(distributions)
    solved = exact_model_nll(model, CONTEXT_B, "linear", "linear", clamp=UNCLAMPED)
    for continuation in CONTINUATIONS:
        truth = nll(distributions, CONTEXT_B, continuation)
        assert solved[continuation] == pytest.approx(truth, abs=6e-3)
    # With the training clamp (rate factors <= 1e4 in the last 1e-4 of time) the chain inserts
    # too little at the very end: a continuation much rarer than its one-token-longer
    # neighbours keeps more probability than the data gives it.
    clamped = exact_model_nll(model, CONTEXT_B, "linear", "linear")
    assert nll(distributions, CONTEXT_B, (ZERO, ONE, ONE)) - clamped[(ZERO, ONE, ONE)] > 1.0


@pytest.mark.parametrize(
    "label, insertion, unmasking, gap_scale, temperature",
    [
        ("distorted rates", "linear", "linear", 1.6, 1.5),
        ("geometric insertion", "geometric(10, 0.01)", "linear", 1.0, 1.0),
    ],
)
def test_flexmdm_bound_is_above_the_exact_nll_of_other_models(
    label, insertion, unmasking, gap_scale, temperature
):
    distributions = toy_distributions()
    model = ExactRates(distributions, insertion, gap_scale=gap_scale, temperature=temperature)
    truth = exact_model_nll(model, CONTEXT_A, insertion, unmasking)
    continuations = [(ZERO, ONE, ONE), (ONE, ONE, ZERO, ZERO), ()]
    estimates = flexmdm_log_likelihood(
        model, [((CONTEXT_A,), y) for y in continuations], insertion=insertion,
        unmasking=unmasking, mask_token_id=MASK, pad_token_id=PAD, mc_num=2000, batch_size=2000,
    )  # fmt: skip
    for continuation, estimate in zip(continuations, estimates):
        bound = -estimate.log_likelihood
        assert bound >= truth[continuation] - 3 * estimate.stderr, (label, continuation)


# ---------------------------------------------------------------------------------------------
# Tests: a trained tiny FlexMDM
# ---------------------------------------------------------------------------------------------

class TinyFlexMDM(nn.Module):
    """A small MLP with the FlexMDM forward protocol, for the toy: it reads the context, the
    length and the one-hot tokens of x_t's continuation (<= 4 positions) and time features, and
    returns token logits (B, L, V) and expected gaps (B, L + 1) (softplus) of the answer slots."""

    def __init__(self, width: int = 96) -> None:
        super().__init__()
        features = 2 + (MAX_LENGTH + 1) + MAX_LENGTH * 4 + 8
        self.body = nn.Sequential(
            nn.Linear(features, width), nn.SiLU(), nn.Linear(width, width), nn.SiLU()
        )
        self.token_head = nn.Linear(width, MAX_LENGTH * VOCAB)
        self.gap_head = nn.Linear(width, MAX_LENGTH + 1)

    def forward(self, input_ids, lengths, t, logits_positions=None):
        batch_size, width = input_ids.shape
        answer = torch.full((batch_size, MAX_LENGTH), 3, dtype=torch.long)  # 3: no token
        answer[:, : width - 1] = input_ids[:, 1 : MAX_LENGTH + 1].clamp(max=3)
        beyond = torch.arange(MAX_LENGTH)[None, :] >= (lengths - 1)[:, None]
        answer[beyond] = 3  # 0, 1, MASK (2) or none (3)
        angles = t.float()[:, None] * (torch.pi * 2.0 ** torch.arange(4.0))  # (B, 4)
        features = torch.cat(
            [
                nn.functional.one_hot(input_ids[:, 0] - CONTEXT_A, 2).float(),
                nn.functional.one_hot(lengths - 1, MAX_LENGTH + 1).float(),
                nn.functional.one_hot(answer, 4).flatten(1).float(),
                angles.sin(),
                angles.cos(),
            ],
            dim=1,
        )
        hidden = self.body(features)
        logits = torch.zeros(batch_size, width, VOCAB)
        token_logits = self.token_head(hidden).view(batch_size, MAX_LENGTH, VOCAB)
        logits[:, 1:] = token_logits[:, : width - 1]
        gaps = torch.zeros(batch_size, width + 1)
        slot_valid = torch.arange(MAX_LENGTH + 1)[None, :] < lengths[:, None]
        expected = nn.functional.softplus(self.gap_head(hidden) - 2.0) * slot_valid
        gaps[:, 1:] = expected[:, :width]
        if logits_positions is not None:
            logits = logits[logits_positions]
        return logits, gaps


CONTINUATION_ROWS = torch.full((len(CONTINUATIONS), MAX_LENGTH), PAD, dtype=torch.long)
for _index, _continuation in enumerate(CONTINUATIONS):
    CONTINUATION_ROWS[_index, : len(_continuation)] = torch.tensor(_continuation, dtype=torch.long)


def _toy_batch(distributions, size: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``size`` rows [context, y] with c uniform and y ~ p(y | c); right-padded, with lengths."""
    contexts = torch.randint(0, 2, (size,), generator=generator) + CONTEXT_A
    choices = torch.zeros(size, dtype=torch.long)
    for context in (CONTEXT_A, CONTEXT_B):
        rows = torch.nonzero(contexts == context).flatten()
        if len(rows):
            draws = torch.multinomial(distributions[context], len(rows), True, generator=generator)
            choices[rows] = draws
    tokens = torch.cat([contexts[:, None], CONTINUATION_ROWS[choices]], dim=1)  # (size, 5)
    return tokens, 1 + CONTINUATION_LENGTHS.long()[choices]


@pytest.fixture(scope="module")
def trained_tiny_flexmdm():
    """TinyFlexMDM trained on the toy with the FlexMDM loss (linear schedules, 400 steps)."""
    torch.manual_seed(0)
    distributions = toy_distributions()
    model = TinyFlexMDM()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(400):
        rows, lengths = _toy_batch(distributions, 128, generator)
        protected = torch.zeros_like(rows, dtype=torch.bool)
        protected[:, 0] = True
        times = sample_times(128, generator=generator, stratified=True)
        batch = forward_process(
            rows, lengths, protected, times, insertion="linear", unmasking="linear",
            mask_token_id=MASK, pad_token_id=PAD, generator=generator,
        )  # fmt: skip
        logits, gaps = model(batch.input_ids, batch.lengths, batch.t, batch.is_mask)
        loss = flexmdm_loss(logits, gaps, batch, insertion="linear", unmasking="linear")
        optimizer.zero_grad()
        loss.loss.backward()
        optimizer.step()
    return model.eval(), distributions


def test_flexmdm_bound_of_a_trained_model_is_never_below_its_exact_nll(trained_tiny_flexmdm):
    model, distributions = trained_tiny_flexmdm
    requests, truths = [], []
    for context in (CONTEXT_A, CONTEXT_B):
        with torch.no_grad():
            solved = exact_model_nll(model, context, "linear", "linear", steps=200)
        # The model learned the data: its cross-entropy is within 0.5 nats of the entropy.
        probabilities = distributions[context]
        model_nll = torch.tensor([solved[y] for y in CONTINUATIONS], dtype=torch.float64)
        entropy = float(-(probabilities * probabilities.log()).sum())
        assert entropy < float((probabilities * model_nll).sum()) < entropy + 0.75
        for continuation in [(), (ZERO, ZERO), (ONE, ZERO), (ZERO, ONE, ONE), (ONE, ONE, ONE, ONE)]:
            requests.append(((context,), continuation))
            truths.append(solved[continuation])
    estimates = flexmdm_log_likelihood(
        model, requests, insertion="linear", unmasking="linear", mask_token_id=MASK,
        pad_token_id=PAD, mc_num=1500, batch_size=1500,
    )  # fmt: skip
    for request, estimate, truth in zip(requests, estimates, truths):
        bound = -estimate.log_likelihood
        assert bound >= truth - 3 * estimate.stderr, (request, estimate, truth)
        if not request[1]:  # nothing to insert: the bound is the exact -log P(no insertion)
            assert bound == pytest.approx(truth, abs=3 * estimate.stderr + 0.01)
    assert _pooled_z(estimates, truths, [0.0] * len(truths)) > -3


# ---------------------------------------------------------------------------------------------
# Tests: the MDM (LLaDA) estimator
# ---------------------------------------------------------------------------------------------


class ExactMDM:
    """The Bayes-optimal MDM of the toy on a canvas of the continuation's length: the posterior
    of each masked token given the context, the clean tokens and the length."""

    def __init__(self, distributions: dict[int, Tensor]) -> None:
        self.distributions = distributions

    def __call__(self, input_ids, lengths, t, logits_positions=None):
        batch_size, width = input_ids.shape
        logits = torch.zeros(batch_size, width, VOCAB, dtype=torch.float64)
        for row, (tokens, length) in enumerate(zip(input_ids.tolist(), lengths.tolist())):
            context, canvas = tokens[0], tokens[1:length]
            support = [
                (index, y) for index, y in enumerate(CONTINUATIONS)
                if len(y) == len(canvas) and all(c in (MASK, v) for c, v in zip(canvas, y))
            ]  # fmt: skip
            weights = torch.stack([self.distributions[context][index] for index, _ in support])
            for position, token in enumerate(canvas):
                if token != MASK:
                    continue
                probs = torch.zeros(VOCAB, dtype=torch.float64)
                for weight, (_, y) in zip(weights, support):
                    probs[y[position]] += weight
                logits[row, 1 + position] = torch.log(probs / probs.sum())
        if logits_positions is None:
            return logits
        return logits[logits_positions]


def test_mdm_mask_counts_are_stratified():
    counts = mdm_mask_counts(4, 12, torch.Generator().manual_seed(0))
    assert sorted(counts.tolist()) == [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]
    counts = mdm_mask_counts(10, 5, torch.Generator().manual_seed(1))  # every other count
    assert len(set(counts.tolist())) == 5 and all(1 <= c <= 10 for c in counts.tolist())


def test_mdm_estimator_is_tight_with_exact_posteriors():
    """With exact conditionals LLaDA's estimator is unbiased for -log p(y | c, |y|)."""
    distributions = toy_distributions()
    requests = [((CONTEXT_A,), (ZERO, ONE, ONE)), ((CONTEXT_B,), (ONE, ZERO, ZERO, ONE))]
    estimates = mdm_log_likelihood(
        ExactMDM(distributions), requests, mask_token_id=MASK, pad_token_id=PAD, mc_num=512,
        batch_size=256,
    )  # fmt: skip
    for ((context,), continuation), estimate in zip(requests, estimates):
        same_length = [
            float(distributions[context][i])
            for i, y in enumerate(CONTINUATIONS) if len(y) == len(continuation)
        ]  # fmt: skip
        truth = nll(distributions, context, continuation) + math.log(sum(same_length))
        assert -estimate.log_likelihood == pytest.approx(truth, abs=4 * estimate.stderr + 1e-9)
        assert estimate.stderr < 0.15


@pytest.mark.parametrize("kind", ["flexmdm", "mdm"])
def test_estimates_do_not_depend_on_batching_and_share_noise_per_context(kind):
    distributions = toy_distributions()
    requests = [((CONTEXT_A,), (ZERO, ONE)), ((CONTEXT_B,), (ONE,)), ((CONTEXT_A,), ())]
    if kind == "flexmdm":
        def run(batch_size, items):
            return flexmdm_log_likelihood(
                ExactRates(distributions), items, insertion="linear", unmasking="linear",
                mask_token_id=MASK, pad_token_id=PAD, mc_num=24, batch_size=batch_size, seed=3,
            )  # fmt: skip
    else:
        def run(batch_size, items):
            return mdm_log_likelihood(
                ExactMDM(distributions), items, mask_token_id=MASK, pad_token_id=PAD, mc_num=24,
                batch_size=batch_size, seed=3,
            )  # fmt: skip
    together = run(5, requests)
    assert together == run(64, requests)  # batch size and composition change nothing
    assert together[1:] == run(7, requests[1:])  # nor does the request's position
    if kind == "mdm":
        assert together[2] == LikelihoodEstimate(0.0, 0.0, 0, 24)  # nothing to predict


def test_requests_with_the_mask_id_or_too_long_are_refused():
    model = ExactRates(toy_distributions())
    options = {"insertion": "linear", "unmasking": "linear", "mask_token_id": MASK,
               "pad_token_id": PAD}  # fmt: skip
    with pytest.raises(ValueError, match="mask id"):
        flexmdm_log_likelihood(model, [((CONTEXT_A,), (MASK,))], **options)
    with pytest.raises(ValueError, match="max_length"):
        flexmdm_log_likelihood(model, [((CONTEXT_A,), (ONE, ONE))], max_length=2, **options)
    with pytest.raises(ValueError, match="not a FlexMDM"):
        flexmdm_log_likelihood(ExactMDM(toy_distributions()), [((CONTEXT_A,), (ONE,))], **options)


# ---------------------------------------------------------------------------------------------
# The variance table of docs/likelihood.md: python tests/test_likelihood.py
# ---------------------------------------------------------------------------------------------


def variance_table(repeats: int = 40) -> str:
    """Spread of the estimates over ``repeats`` seeds vs mc_num, FlexMDM (exact rates) and MDM
    (exact posteriors), on three toy continuations."""
    torch.set_num_threads(1)
    distributions = toy_distributions()
    cases = [(CONTEXT_A, (ZERO, ONE, ONE)), (CONTEXT_B, (ONE, ZERO, ZERO, ONE)),
             (CONTEXT_A, (ONE, ONE, ZERO, ZERO))]  # fmt: skip
    requests = [((c,), y) for c, y in cases]
    header = ("| estimator | mc_num | std of the estimate (nats), per case | mean abs error "
              "| per-sample std |")  # fmt: skip
    lines = [header, "|---|---|---|---|---|"]
    for kind in ("flexmdm", "mdm"):
        for mc_num in (8, 32, 128, 512):
            runs = []
            for seed in range(repeats):
                if kind == "flexmdm":
                    runs.append(flexmdm_log_likelihood(
                        ExactRates(distributions), requests, insertion="linear",
                        unmasking="linear", mask_token_id=MASK, pad_token_id=PAD, mc_num=mc_num,
                        batch_size=512, seed=seed, min_rate_denominator=UNCLAMPED,
                    ))  # fmt: skip
                else:
                    runs.append(mdm_log_likelihood(
                        ExactMDM(distributions), requests, mask_token_id=MASK, pad_token_id=PAD,
                        mc_num=mc_num, batch_size=512, seed=seed,
                    ))  # fmt: skip
            values = torch.tensor([[-e.log_likelihood for e in run] for run in runs])
            truths = []
            for context, y in cases:
                truth = nll(distributions, context, y)
                if kind == "mdm":  # the MDM bounds -log p(y | c, |y|)
                    truth += math.log(sum(
                        float(distributions[context][i])
                        for i, other in enumerate(CONTINUATIONS) if len(other) == len(y)
                    ))  # fmt: skip
                truths.append(truth)
            spread = values.std(dim=0)
            error = (values - torch.tensor(truths)).abs().mean()
            per_sample = float(spread.mean()) * math.sqrt(mc_num)
            lines.append(
                f"| {kind} | {mc_num} | {' / '.join(f'{v:.3f}' for v in spread.tolist())} | "
                f"{float(error):.3f} | {per_sample:.1f} |"
            )
    return "\n".join(lines)


def timing_table(context: int = 32, continuation: int = 32) -> str:
    """Seconds per request vs mc_num with a tiny LLaDA (d 64, 2 blocks) on one CPU thread."""
    from retrofit.adapter import FlexMDM
    from retrofit.models import LLaDAModelLM, tiny_llada_config

    torch.set_num_threads(1)
    torch.manual_seed(0)
    lines = ["| estimator | mc_num | forward rows | seconds per request |", "|---|---|---|---|"]
    request = [(list(range(context)), list(range(context, context + continuation)))]
    for kind in ("flexmdm", "mdm"):
        model = FlexMDM.retrofit(LLaDAModelLM(tiny_llada_config()), "tiny-llada", kind=kind)
        for mc_num in (8, 32, 128, 512):
            start = time.perf_counter()
            if kind == "flexmdm":
                flexmdm_log_likelihood(
                    model, request, insertion="linear", unmasking="linear", mask_token_id=126,
                    pad_token_id=127, mc_num=mc_num, batch_size=64,
                )  # fmt: skip
            else:
                mdm_log_likelihood(
                    model, request, mask_token_id=126, pad_token_id=127, mc_num=mc_num,
                    batch_size=64,
                )  # fmt: skip
            elapsed = time.perf_counter() - start
            lines.append(f"| {kind} | {mc_num} | {mc_num} | {elapsed:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(variance_table(int(sys.argv[1]) if len(sys.argv) > 1 else 40))
    print()
    print(timing_table())
