"""labkit.distributed and labkit.sharding: two real processes (gloo) against one, on the shipped model."""

import pytest
import torch
from safetensors.torch import load_file

import labkit
from labkit.distributed import WEIGHTS, launch, weight_difference
from labkit.sharding import SHARDED_CHECKPOINT, gather_checkpoint


@pytest.fixture(scope="module")
def data_parallel(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    options = dict(steps=3, batch_size=4, examples=64)
    one = launch(root / "one", processes=1, accumulation=2, **options)
    two = launch(root / "two", processes=2, accumulation=1, **options)
    return root, one, two


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    one = launch(root / "one", processes=1, entry="labkit.sharding", steps=3, batch_size=4)
    two = launch(root / "two", processes=2, entry="labkit.sharding", steps=3, batch_size=4)
    return root, one, two


@pytest.mark.slow
def test_two_data_parallel_processes_end_where_one_accumulating_process_does(data_parallel):
    root, (one,), two = data_parallel
    assert [r["world_size"] for r in two] == [2, 2] and {r["wrapped_in"] for r in two} == {"DistributedDataParallel"}
    assert one["world_size"] == 1 and one["wrapped_in"] != "DistributedDataParallel"
    assert weight_difference(root / "one", root / "two") <= 1e-6
    assert two[0]["losses"] == pytest.approx(one["losses"], abs=1e-6)
    assert all(r["allreduce_seconds"] > 0 for r in two)
    assert one["peak_bytes"] > 0  # PeakMemory followed a step of two accumulated micro-batches


@pytest.mark.slow
def test_each_fsdp_rank_holds_half_the_weights_gradients_and_optimizer_state(sharded):
    _, (one,), two = sharded
    for rank in two:
        for term in ("parameter_bytes", "gradient_bytes", "optimizer_bytes"):
            assert rank[term] == pytest.approx(one[term] / 2, rel=0.01), term
    assert two[0]["losses"] == pytest.approx(one["losses"], abs=1e-5)


@pytest.mark.slow
def test_a_sharded_checkpoint_gathers_into_a_plain_model(sharded):
    root, _, _ = sharded
    gathered = gather_checkpoint(root / "two" / SHARDED_CHECKPOINT)
    written = load_file(root / "two" / WEIGHTS)
    assert gathered.keys() == written.keys()
    assert all(torch.equal(gathered[k], written[k]) for k in written)
    model, _ = labkit.load_base(dtype=torch.float32)
    model.load_state_dict(gathered, strict=True)
    assert weight_difference(root / "one", root / "two") <= 1e-4  # the sharded run trained like the plain one


@pytest.mark.parametrize("options, message", [
    (dict(processes=0), "processes must be an integer >= 1"),
    (dict(processes=2, device="tpu"), "device must be 'cpu' or 'cuda'"),
    (dict(processes=2, entry="labkit.train"), "entry must be"),
    (dict(processes=2, entry="labkit.sharding", device="cuda"), "runs its processes on the CPU"),
])
def test_launch_refuses_what_it_cannot_start(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        launch(tmp_path, **options)


@pytest.mark.skipif(torch.cuda.device_count() >= 64, reason="needs fewer GPUs than requested")
def test_launch_on_cuda_needs_a_gpu_per_process(tmp_path):
    with pytest.raises(ValueError, match="64 processes need 64 GPUs"):
        launch(tmp_path, processes=64, device="cuda")


def test_a_folder_without_a_distributed_checkpoint_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no torch.distributed.checkpoint"):
        gather_checkpoint(tmp_path)


@pytest.mark.slow
def test_the_zero3_estimate_matches_each_fsdp_ranks_measured_bytes(sharded):
    from labkit.memory import estimate_memory
    from labkit.paths import BASE_DIR

    _, _, two = sharded
    estimate = estimate_memory(BASE_DIR / "config.json", method="full", device="cpu", precision="fp32", world_size=2,
                               sharding="zero3").breakdown
    for term, measured in (("weights", "parameter_bytes"), ("gradients", "gradient_bytes"), ("optimizer_states", "optimizer_bytes")):
        for rank in two:
            assert estimate[term] == pytest.approx(rank[measured], rel=0.10), term
