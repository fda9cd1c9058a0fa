"""The shared training engine: LR schedule, weight-decay groups, the step, epochs with best-epoch
tracking, and resumable checkpoints; train/fine_tune leave no global torch state behind."""

import math

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import tiny_model
from torch import nn
from torch.utils.data import TensorDataset

from vitdeploy.data.loader import CropFlip
from vitdeploy.errors import VitDeployError
from vitdeploy.train.config import TrainConfig
from vitdeploy.train.loop import fine_tune
from vitdeploy.train.trainer import (
    Checkpoint,
    EpochPlan,
    RunState,
    Schedule,
    Trainer,
    param_groups,
    run_epochs,
)


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    schedule = Schedule(total_steps=14, warmup_steps=4)
    peak, floor = 2.0, 0.5
    assert [schedule.lr(s, peak, floor) for s in range(4)] == [0.5, 1.0, 1.5, 2.0]
    assert schedule.lr(4, peak, floor) == peak  # the cosine starts at the peak
    assert schedule.lr(9, peak, floor) == pytest.approx((peak + floor) / 2)  # half-way through the decay
    assert schedule.lr(14, peak, floor) == pytest.approx(floor)
    decay = [schedule.lr(s, peak, floor) for s in range(4, 15)]
    assert all(a > b for a, b in zip(decay, decay[1:]))


def test_schedule_without_warm_up_starts_at_the_peak_and_decays_to_zero_by_default():
    schedule = Schedule(total_steps=10)
    assert schedule.lr(0, 3.0) == 3.0
    assert schedule.lr(10, 3.0) == pytest.approx(0.0, abs=1e-12)
    assert schedule.lr(5, 3.0) == pytest.approx(3.0 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_weight_decay_goes_to_matrices_only():
    model = tiny_model()
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "blocks.0.attn.qkv.weight" in decayed and "head.weight" in decayed
    assert not decayed & {"cls_token", "pos_embed", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "head.bias"}
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 8), nn.GELU(), nn.Linear(8, 3))


def small_data(n=20, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 4, 4, generator=generator), torch.randint(3, (n,), generator=generator))


def ce(model):
    return lambda x, y: (F.cross_entropy(model(x), y), {"batch": len(y)})


def small_trainer(model, total_steps=20, seed=0):
    groups = [{**group, "lr": 1e-2, "min_lr": 1e-3} for group in param_groups(model, 0.01)]
    groups[1]["lr"] = 5e-2  # a second peak, without a floor
    del groups[1]["min_lr"]
    return Trainer(model, groups, Schedule(total_steps, warmup_steps=2), seed, CropFlip(1))


def test_a_step_sets_each_groups_lr_from_its_own_range_and_trains():
    model = small_model()
    trainer = small_trainer(model)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = small_data(4).tensors
    result = trainer.step(7, x, y, ce(model))
    schedule = Schedule(20, warmup_steps=2)
    assert [g["lr"] for g in trainer.optimizer.param_groups] == [schedule.lr(7, 1e-2, 1e-3), schedule.lr(7, 5e-2)]
    assert set(result) == {"loss", "batch"} and result["batch"] == 4 and math.isfinite(result["loss"])
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_steps_are_repeatable_given_the_seed_and_depend_on_it():
    x, y = small_data(6).tensors
    outcomes = []
    for seed in (0, 0, 1):
        model = small_model()
        trainer = small_trainer(model, seed=seed)
        outcomes.append([trainer.step(s, x, y, ce(model))["loss"] for s in range(3)])
    assert outcomes[0] == outcomes[1] and outcomes[0] != outcomes[2]  # the seed drives the augmentation


def test_run_steps_takes_exactly_the_steps_asked_for():
    model = small_model()
    data = iter([small_data(4, seed=s).tensors for s in range(10)])
    results = small_trainer(model).run_steps(data, 3, ce(model), "test", progress=False)
    assert len(results) == 3 and len(list(data)) == 7  # no batch pulled beyond the last step


def plan_for(data, epochs, scores, best_key="score", on_best=None, at_end=lambda epoch: None):
    """An epoch plan whose record's ``score`` of epoch e is ``scores[e - 1]``; ``at_end`` sees each epoch first."""
    def finish(epoch):
        at_end(epoch)
        return {"epoch": epoch.epoch, "score": scores[epoch.epoch - 1], "steps": len(epoch.steps),
                "mean_loss": sum(s["loss"] for s in epoch.steps) / len(epoch.steps)}

    return EpochPlan(data, epochs, batch_size=8, seed=3, finish=finish, best_key=best_key, on_best=on_best)


def test_epochs_record_every_epoch_and_keep_the_best_model():
    model, data = small_model(), small_data()
    snapshots, improved = {}, []
    trainer = small_trainer(model)

    def on_best(state):
        improved.append(state.best_epoch)

    def snapshot(epoch):
        snapshots[epoch.epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    plan = plan_for(data, 3, [0.2, 0.7, 0.5], on_best=on_best, at_end=snapshot)
    state = run_epochs(trainer, plan, ce(model), RunState(), progress=False)
    assert [r["epoch"] for r in state.history] == [1, 2, 3] and all(r["steps"] == 3 for r in state.history)
    assert state.epochs_done == 3 and state.best_epoch == 2 and state.best_score == 0.7 and improved == [1, 2]
    assert all(torch.equal(state.best_state[k], v) for k, v in snapshots[2].items())
    assert not all(torch.equal(state.best_state[k], v) for k, v in model.state_dict().items())


def test_without_a_best_key_nothing_is_tracked():
    model = small_model()
    state = run_epochs(small_trainer(model), plan_for(small_data(), 2, [0.1, 0.2], best_key=None), ce(model),
                       progress=False)  # a fresh run by default
    assert state.best_epoch is None and state.best_state is None and len(state.history) == 2


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_checkpoint_to_the_same_result(tmp_path):
    data, scores = small_data(), [0.3, 0.1, 0.9]
    straight_model = small_model()
    straight = run_epochs(small_trainer(straight_model), plan_for(data, 3, scores), ce(straight_model), RunState(),
                          Checkpoint(tmp_path / "a.pt", {"run": 1}, "test"), progress=False)

    model = small_model()
    checkpoint = Checkpoint(tmp_path / "b.pt", {"run": 1}, "test")

    def dies_in_epoch_two(epoch):
        if epoch.epoch == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        run_epochs(small_trainer(model), plan_for(data, 3, scores, at_end=dies_in_epoch_two), ce(model), RunState(),
                   checkpoint, progress=False)

    model = small_model(seed=5)  # a fresh process: other initial weights, which the checkpoint replaces
    trainer = small_trainer(model)
    state = checkpoint.resume(trainer)
    assert state.epochs_done == 1
    resumed = run_epochs(trainer, plan_for(data, 3, scores), ce(model), state, checkpoint, progress=False)
    assert resumed.history == straight.history and resumed.best_epoch == straight.best_epoch == 3
    for key, value in straight_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


def test_a_checkpoint_resumes_only_the_same_run_and_a_missing_one_starts_fresh(tmp_path):
    model = small_model()
    trainer = small_trainer(model)
    assert Checkpoint(tmp_path / "none.pt", {}, "test").resume(trainer) == RunState()
    Checkpoint(tmp_path / "c.pt", {"lr": 1}, "test").save(trainer, RunState())
    with pytest.raises(VitDeployError, match="different test run"):
        Checkpoint(tmp_path / "c.pt", {"lr": 2}, "test").resume(trainer)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(VitDeployError, match="not a readable test checkpoint"):
        Checkpoint(tmp_path / "broken.pt", {}, "test").resume(trainer)


@pytest.mark.parametrize("edit", [
    lambda payload: [payload],  # not a dict
    lambda payload: {**payload, "epochs_done": "3"},
    lambda payload: {**payload, "model": {"no.such.weight": torch.zeros(1)}},
    lambda payload: {k: v for k, v in payload.items() if k != "optimizer"},
])
def test_a_checkpoint_of_the_right_run_with_a_field_of_the_wrong_type_is_one_line(tmp_path, edit):
    trainer = small_trainer(small_model())
    checkpoint = Checkpoint(tmp_path / "c.pt", {"lr": 1}, "test")
    checkpoint.save(trainer, RunState())
    torch.save(edit(torch.load(checkpoint.path, weights_only=True)), checkpoint.path)
    with pytest.raises(VitDeployError, match="not a usable test checkpoint"):
        checkpoint.resume(trainer)


def test_fine_tuning_leaves_torch_threads_and_global_rng_as_it_found_them():
    model = tiny_model()
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(5, (16,)))
    previous_threads, rng = torch.get_num_threads(), torch.get_rng_state()
    config = TrainConfig(batch_size=8, warmup_epochs=0.0, threads=previous_threads + 1)
    try:
        fine_tune(model, data, config, steps=2)
    finally:
        threads_after = torch.get_num_threads()
        torch.set_num_threads(previous_threads)
    assert threads_after == previous_threads
    assert torch.equal(torch.get_rng_state(), rng)
