"""The compile policy, the padded network, CUDA-graph guards and the speed cap of the automatic batch (no compile)."""

import pytest
import torch

from ddimkit import compile_policy as cp
from ddimkit.batching import balanced_batch, batch_for_speed
from ddimkit.cli.main import build_parser
from ddimkit.compiled_net import StaticBatchNet, compiled_sampling_net, cuda_graphs_enabled

CIFAR = dict(params=35.7e6, pixels=32 * 32)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    return tmp_path / "inductor"


def test_forced_settings_win_and_cpu_auto_is_eager(cache):
    assert cp.should_compile(True, "cpu", 1, **CIFAR) is True
    assert cp.should_compile(False, "cuda", 1e12, **CIFAR) is False
    assert cp.should_compile("auto", "cpu", 1e12, **CIFAR) is False
    with pytest.raises(ValueError, match="auto"):
        cp.should_compile("maybe", "cuda", 1, **CIFAR)


def test_auto_weighs_work_against_the_measured_compile(cache):
    # ddpm-cifar10, DDIM-50: a compile saves 74 µs per image-evaluation and costs 28 s cold
    assert not cp.should_compile("auto", "cuda", 4096 * 50, **CIFAR)   # saves 15 s < 28 s
    assert cp.should_compile("auto", "cuda", 50_000 * 50, **CIFAR)     # saves 185 s
    cp.record_compile("k", 30.0)                                       # the cache now holds the graph
    assert cp.was_compiled("k") and not cp.was_compiled("other")
    assert cp.should_compile("auto", "cuda", 4096 * 50, **CIFAR, key="k")      # 15 s > 15% of 28 s
    assert not cp.should_compile("auto", "cuda", 256 * 50, **CIFAR, key="k")   # 0.9 s < 4.2 s
    # a model with 4x the parameters and 4x the pixels saves 16x as much per evaluation
    assert cp.should_compile("auto", "cuda", 4096 * 50, params=4 * 35.7e6, pixels=64 * 64)
    # training: 218 µs per image against 70 s
    assert not cp.should_compile("auto", "cuda", 400 * 128, **CIFAR, task="train")
    assert cp.should_compile("auto", "cuda", 5000 * 128, **CIFAR, task="train")
    assert cp.should_compile("auto", "cuda", None, **CIFAR, task="train", budget_s=7.5 * 60)
    assert not cp.should_compile("auto", "cuda", None, **CIFAR, task="train", budget_s=120)


def test_persistent_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("DDIMKIT_CACHE", str(tmp_path / "dk"))
    assert cp.use_persistent_cache() == tmp_path / "dk" / "inductor"
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))  # the user's choice stays
    assert cp.use_persistent_cache() == tmp_path / "mine" and (tmp_path / "mine").is_dir()


def test_compile_key_separates_shape_and_task():
    net = torch.nn.Linear(2, 2)
    a = cp.compile_key(net, (4, 1, 8, 8), "cpu", "sample")
    assert a == cp.compile_key(net, (4, 1, 8, 8), "cpu", "sample")
    assert a != cp.compile_key(net, (8, 1, 8, 8), "cpu", "sample") != cp.compile_key(net, (4, 1, 8, 8), "cpu",
                                                                                       "train")


class Recorder:
    """A stand-in network that records what it is called with and returns one reused buffer."""

    def __init__(self):
        self.calls, self.buffer = [], None

    def __call__(self, x, t):
        self.calls.append((tuple(x.shape), x.is_contiguous(), tuple(t.shape), t.stride()))
        self.buffer = x * 2 + t.float().reshape(-1, 1, 1, 1) if self.buffer is None else self.buffer.copy_(
            x * 2 + t.float().reshape(-1, 1, 1, 1))
        return self.buffer


def test_static_batch_pads_and_normalises():
    rec = Recorder()
    net = StaticBatchNet(rec, 4)
    x = torch.randn(6, 1, 2, 2)[::2]  # a non-contiguous ragged batch of 3
    t = torch.tensor([5]).expand(3)   # the samplers' stride-0 timesteps
    out = net(x, t)
    assert rec.calls == [((4, 1, 2, 2), True, (4,), (1,))]
    assert torch.equal(out, x * 2 + 5)
    assert net(torch.zeros(4, 1, 2, 2), 7).shape == (4, 1, 2, 2)   # a Python timestep becomes a (B,) tensor
    with pytest.raises(ValueError, match="compiled for batches of 4"):
        net(torch.zeros(5, 1, 2, 2), t[:1])


def test_cuda_graph_mode_marks_steps_and_copies_outputs(monkeypatch):
    marks = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    rec = Recorder()
    net = StaticBatchNet(rec, 2, cuda_graphs=True)
    a = net(torch.zeros(2, 1, 1, 1), torch.zeros(2, dtype=torch.long))
    net(torch.ones(2, 1, 1, 1), torch.zeros(2, dtype=torch.long))
    assert len(marks) == 2
    assert torch.equal(a, torch.zeros(2, 1, 1, 1))  # not overwritten by the second replay


def test_cuda_graphs_only_on_cuda(monkeypatch, cache):
    monkeypatch.setenv("DDIMKIT_CUDA_GRAPHS", "1")
    assert not cuda_graphs_enabled("cpu") and cuda_graphs_enabled("cuda")
    monkeypatch.setenv("DDIMKIT_CUDA_GRAPHS", "0")
    assert not cuda_graphs_enabled("cuda")
    monkeypatch.setenv("DDIMKIT_CUDA_GRAPHS", "sometimes")
    with pytest.raises(ValueError, match="DDIMKIT_CUDA_GRAPHS"):
        cuda_graphs_enabled("cuda")
    monkeypatch.setenv("DDIMKIT_CUDA_GRAPHS", "1")
    seen = []
    monkeypatch.setattr(torch, "compile", lambda model, **kw: seen.append(kw) or model)
    model = torch.nn.Conv2d(1, 1, 1)
    net = compiled_sampling_net(model, True, 4, (1, 8, 8), 100, cache={})
    assert seen == [{"dynamic": False}] and not net.cuda_graphs  # no reduce-overhead on the CPU
    assert compiled_sampling_net(model, "auto", 4, (1, 8, 8), 1e12, cache={}) is None  # CPU auto: eager


def test_batch_for_speed_and_balanced_batches():
    assert batch_for_speed(12.11e9) == 256          # ddpm-cifar10 at 32×32 (ddimkit's FLOP count)
    assert batch_for_speed(12.44e9) == 256
    assert batch_for_speed(36e6) == 65536            # tiny: memory decides
    assert batch_for_speed(1e15) == 8                # never below 8
    assert balanced_batch(4096, 256) == 256
    assert balanced_batch(50_000, 256) == 256        # 196 batches, the last one 200 images
    assert balanced_batch(300, 256) == 152           # 152 + 148, not 256 + 44
    assert balanced_batch(5, 256) == 5
    with pytest.raises(ValueError):
        balanced_batch(0, 8)


@pytest.mark.parametrize("argv, value", [([], "auto"), (["--compile"], True), (["--no-compile"], False),
                                         (["--compile", "auto"], "auto"), (["--compile", "no"], False)])
def test_cli_compile_flag(argv, value):
    for cmd in (["sample", "--ckpt", "x", "--out", "y.png"], ["train", "--out", "r"]):
        assert build_parser().parse_args(cmd + argv).compile == value


def test_cli_compile_flag_rejects_nonsense(capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["sample", "--ckpt", "x", "--out", "y.png", "--compile", "maybe"])
    assert e.value.code == 2 and "auto, yes or no" in capsys.readouterr().err


def test_inductor_default_is_not_a_user_choice(tmp_path, monkeypatch):
    """An earlier torch.compile writes inductor's own default into the variable; ddimkit's folder wins."""
    default = cp._inductor_default()
    if default is None:
        pytest.skip("this torch has no cache_dir_utils")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default)
    monkeypatch.setenv("DDIMKIT_CACHE", str(tmp_path / "dk"))
    assert cp.use_persistent_cache() == tmp_path / "dk" / "inductor"
