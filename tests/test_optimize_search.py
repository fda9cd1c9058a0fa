"""The optimiser's search rules without models: successive halving's rounds, the measured
correction of a candidate's goal, and the rank correlation the ranking check reports."""

from types import SimpleNamespace

import pytest

from vitdeploy.lut.measure import corrected_goal
from vitdeploy.optimize.candidates import Candidate, Measurement
from vitdeploy.optimize.halving import halve, rank_correlation, ranking, successive_halving


def candidate(name: str, kind: str, quality: float, measured_ratio: float = 0.5, budget_ratio: float = 0.5,
              precision: str = "fp32") -> Candidate:
    search = SimpleNamespace(precision=precision, budget_ratio=budget_ratio)
    made = Candidate(name, kind, model=None, structure_ratio=1.0, remake=None, search=search)
    made.measurements.append(Measurement(measured_ratio, measured_ratio))
    made.quality = quality  # what the fake proxy reads, plus a little per step tuned
    return made


def race(candidates, first_steps=10, total_steps=100):
    tuned = []

    def tune(c, steps, index):
        tuned.append((c.name, steps, index))
        c.tuned_steps += steps

    rounds = successive_halving(candidates, tune, lambda c: c.quality + c.tuned_steps / 1000, first_steps,
                                total_steps)
    return rounds, tuned


def test_every_round_tunes_its_contestants_equally_and_doubles_the_steps():
    field = [candidate(f"joint {i}", "joint", 0.80 + i / 100) for i in range(6)]
    field += [candidate("nvit", "nvit alone", 0.70), candidate("star", "tokens alone", 0.60)]
    rounds, tuned = race(field)
    assert [r["steps"] for r in rounds] == [10, 30, 70]
    for index, steps in enumerate((10, 20, 40)):
        this_round = [t for t in tuned if t[2] == index]
        assert {t[1] for t in this_round} == {steps}
        assert {t[0] for t in this_round} == set(rounds[index]["proxy"])
    # the worst two single-method runs stay in the race to the end, next to the better half
    assert set(rounds[1]["proxy"]) == {"joint 5", "joint 4", "joint 3", "joint 2", "nvit", "star"}
    assert set(rounds[2]["proxy"]) == {"joint 5", "joint 4", "joint 3", "nvit", "star"}
    assert ranking(field)[0].name == "joint 5"


def test_the_race_stops_before_passing_the_full_fine_tune():
    field = [candidate(f"joint {i}", "joint", i / 10) for i in range(8)]
    rounds, _ = race(field, first_steps=25, total_steps=100)
    assert [r["steps"] for r in rounds] == [25, 75]  # a third round would reach 175 > 100
    assert max(c.tuned_steps for c in field) <= 100


def test_a_race_that_stops_shrinking_goes_on_with_doubled_steps_while_they_fit():
    field = [candidate("joint", "joint", 0.9), candidate("nvit", "nvit alone", 0.8),
             candidate("star", "tokens alone", 0.7)]
    rounds, _ = race(field)
    assert [r["steps"] for r in rounds] == [10, 30, 70] and all(len(r["proxy"]) == 3 for r in rounds)
    assert ranking(field)[0].name == "joint"


def test_the_race_ends_when_one_candidate_is_left():
    field = [candidate("a", "joint", 0.9), candidate("b", "joint", 0.8)]
    rounds, _ = race(field)
    assert [r["steps"] for r in rounds] == [10] and ranking(field)[0].name == "a"


def test_no_fine_tune_budget_scores_once():
    field = [candidate("a", "joint", 0.9), candidate("b", "joint", 0.8)]
    rounds, tuned = race(field, total_steps=0)
    assert [r["steps"] for r in rounds] == [0] and {t[1] for t in tuned} == {0}


def test_equal_proxies_rank_the_faster_candidate_first():
    slow, fast = candidate("slow", "joint", 0.9, 0.5), candidate("fast", "joint", 0.9, 0.4)
    for c in (slow, fast):
        c.proxies.append(0.9)
    assert [c.name for c in halve([slow, fast])] == ["fast"]


def test_across_precisions_the_smaller_share_of_the_budget_ranks_first():
    """Each precision measures against its own unpruned model: an INT8 candidate at 0.6 of the
    INT8 unpruned latency, whose budget is 0.8 of it, is faster than a float one at 0.5 of 0.5."""
    fp32 = candidate("fp32", "joint", 0.9, measured_ratio=0.5, budget_ratio=0.5)
    int8 = candidate("int8", "joint", 0.9, measured_ratio=0.6, budget_ratio=0.8, precision="int8")
    for c in (fp32, int8):
        c.proxies.append(0.9)
    assert int8.budget_share == pytest.approx(0.75) and fp32.budget_share == pytest.approx(1.0)
    assert [c.name for c in halve([fp32, int8])] == ["int8"]


@pytest.mark.parametrize("machine", [lambda p: 1.2 * p, lambda p: p + 0.1, lambda p: 1 - 0.8 * (1 - p)],
                         ids=["off-by-a-factor", "a-fixed-cost-more", "savings-scaled"])
def test_corrected_goals_land_on_the_target_without_over_pruning(machine):
    """Each simulated machine measures a plan predicted at p as ``machine(p)``; a table is wrong in
    each of these three ways in practice (a slower machine, a cost it does not price, overheads)."""
    measurements = [(0.5, machine(0.5))]
    for _ in range(2):
        goal = corrected_goal(0.5, measurements)
        assert machine(goal) >= 0.5 - 1e-9  # never below the target: no pruning beyond what it needs
        measurements.append((goal, machine(goal)))
    assert measurements[-1][1] == pytest.approx(0.5)


def test_corrected_goal_gives_up_when_the_measurements_show_no_way_down():
    assert corrected_goal(0.5, [(0.5, 1.02)]) is None
    assert corrected_goal(0.5, [(0.6, 0.7), (0.5, 0.75)]) is None  # pruning more measured slower


def test_rank_correlation():
    assert rank_correlation([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert rank_correlation([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties share their mean rank: x ranks 0, 1.5, 1.5, 3 against 0, 1, 2, 3 → 4.5 / √(4.5 · 5)
    assert rank_correlation([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert rank_correlation([1, 2], [1, 2]) is None and rank_correlation([1, 1, 1], [1, 2, 3]) is None
