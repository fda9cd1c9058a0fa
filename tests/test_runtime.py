"""The runtime: device and precision checks, sharding arithmetic, one writer per job, autocast
training on the CPU, and (on a GPU) CUDA training and importance."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from tests.conftest import tiny_model
from vitdeploy import runtime
from vitdeploy.errors import VitDeployError
from vitdeploy.io import atomic_dir, write_json_atomic
from vitdeploy.prune.methods.nvit.importance import hessian_importance
from vitdeploy.train.config import TrainConfig
from vitdeploy.train.loop import fine_tune, training_loss

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def random_data(count: int, seed: int = 0):
    from vitdeploy.data import InMemoryImageDataset

    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 5, (count,), generator=generator)
    return InMemoryImageDataset(images, labels, [str(i) for i in range(5)], img_size=32, in_chans=3,
                                mean=(0.5,) * 3, std=(0.5,) * 3, resize=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(VitDeployError, match="no CUDA device"):
        runtime.resolve("cuda")


def test_fp16_needs_cuda_and_bad_devices_are_named():
    with pytest.raises(VitDeployError, match="fp16 needs a CUDA device"):
        runtime.resolve("cpu", "fp16")
    with pytest.raises(VitDeployError, match="'tpu'"):
        runtime.resolve("tpu")


def test_defaults_follow_the_machine():
    resolved = runtime.resolve()
    assert (resolved.device.startswith("cuda"), resolved.amp) == ((True, "bf16") if torch.cuda.is_available()
                                                                  else (False, "off"))


def test_the_torchrun_environment_sets_rank_and_world_size(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    resolved = runtime.resolve("cpu")
    assert (resolved.rank, resolved.world_size, resolved.main) == (3, 4, False)
    with pytest.raises(VitDeployError, match="multiple of the 4 processes"):
        resolved.require_divisible_batch(30)


@pytest.mark.parametrize("count, world", [(0, 2), (7, 2), (8, 4), (5, 8), (257, 3)])
def test_shards_cover_every_item_once_and_differ_by_at_most_one(count, world):
    shards = [runtime.Runtime(rank=r, world_size=world).shard(list(range(count))) for r in range(world)]
    assert list(itertools.chain(*shards)) == list(range(count))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_only_the_main_process_writes(tmp_path):
    with runtime.use(runtime.Runtime(rank=1, world_size=2)):
        write_json_atomic(tmp_path / "report.json", {"a": 1})
        with atomic_dir(tmp_path / "model", ["spec.json"]) as staged:
            (staged / "spec.json").write_text("{}")
    assert list(tmp_path.iterdir()) == []
    write_json_atomic(tmp_path / "report.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_bf16_autocast_fine_tune_runs_on_the_cpu():
    model, before = tiny_model(), tiny_model()
    with runtime.use(runtime.Runtime(amp="bf16")):
        result = fine_tune(model, random_data(32), TrainConfig(batch_size=8, lr=1e-3, warmup_epochs=0.0), steps=3)
    assert len(result["losses"]) == 3 and all(torch.isfinite(torch.tensor(result["losses"])))
    changed = [not torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.state_dict().values())]
    assert any(changed)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast keeps fp32 master weights


def _importance(model, data, rt: runtime.Runtime) -> dict[str, torch.Tensor]:
    from vitdeploy.data import batches

    config = TrainConfig()
    teacher = copy.deepcopy(model)
    with runtime.use(rt), rt.on_device(model, teacher):
        return hessian_importance(model, list(batches(data, 16)),
                                  lambda m, x, y: training_loss(m, x, y, config, teacher))


@pytest.mark.gpu
@CUDA
def test_importance_on_cuda_matches_the_cpu():
    model, data = tiny_model(), random_data(32)
    cpu = _importance(model, data, runtime.Runtime())
    cuda = _importance(model, data, runtime.Runtime(device="cuda:0"))
    assert next(model.parameters()).device.type == "cpu"  # back home after the pass
    for key, value in cpu.items():
        torch.testing.assert_close(cuda[key].cpu(), value, rtol=1e-3, atol=1e-9)


@pytest.mark.gpu
@CUDA
def test_a_bf16_fine_tune_step_on_cuda_matches_fp32_closely():
    data, config = random_data(32), TrainConfig(batch_size=16, lr=1e-3, warmup_epochs=0.0)
    losses = {}
    for amp in ("off", "bf16"):
        model = tiny_model()
        with runtime.use(runtime.Runtime(device="cuda:0", amp=amp)):
            losses[amp] = fine_tune(model, data, config, steps=2)["losses"]
        assert next(model.parameters()).device.type == "cpu"
    assert losses["bf16"] == pytest.approx(losses["off"], rel=0.05)
