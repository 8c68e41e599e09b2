"""Device, AMP and memory-format choices; the uint8 path; calibration maths."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from birdray.evaluate.metrics import calibration_bins, classification_metrics, fit_temperature
from birdray.evaluate.metrics import softmax_np as softmax
from birdray.model import factory
from birdray.model.factory import (
    auto_threads,
    autocast_dtype,
    cpu_computes_bf16,
    create_model,
    pick_device,
    prepare_for_device,
    train_autocast,
)
from birdray.model.preprocess import build_transform, normalize_uint8, resolve_data_config


def test_device_and_amp_choices(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device(prefer_gpu=True).type == "cpu"  # GPU config still runs on a laptop
    assert autocast_dtype(torch.device("cpu"), amp=False) is None
    assert autocast_dtype(torch.device("cpu"), amp=True) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert autocast_dtype(torch.device("cuda"), amp=True) is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert autocast_dtype(torch.device("cuda"), amp=True) is torch.float16


def test_training_autocasts_to_bf16_on_cpu_exactly_where_the_cpu_computes_it(monkeypatch):
    cpu = torch.device("cpu")
    for native in (True, False):  # AVX512-BF16 here, as on AMX; elsewhere oneDNN emulates bf16
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda n=native: n)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
        assert cpu_computes_bf16() is native
        assert train_autocast(cpu, amp=True, amp_cpu=None) is (torch.bfloat16 if native else None)
        # a choice the user made is kept either way, and the GPU switch is not the CPU's
        assert train_autocast(cpu, amp=False, amp_cpu=True) is torch.bfloat16
        assert train_autocast(cpu, amp=True, amp_cpu=False) is None
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert cpu_computes_bf16() is True
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # an older or other torch
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    assert cpu_computes_bf16() is False


def test_unset_torch_threads_are_the_node_cores_shared_never_below_the_reservation(monkeypatch):
    monkeypatch.setattr(factory, "node_cores", lambda: 2)  # this machine's kind: 2 cores
    assert auto_threads(1.0) == 2  # one scoring actor: both cores, the decode tasks time-slice
    assert auto_threads(1.0, sharing=2) == 1  # two workers on the node: one core each
    assert auto_threads(0.5, sharing=2) == 1
    assert auto_threads(4.0) == 4  # never fewer than the CPUs it reserved
    monkeypatch.setattr(factory, "node_cores", lambda: 16)
    assert auto_threads(1.0, sharing=3) == 5


def test_node_cores_are_physical_cores_within_the_container_and_ray_node_limits(monkeypatch):
    import ray._private.utils as ray_utils

    monkeypatch.setattr(factory, "_physical_cores", lambda cpus: 4)
    monkeypatch.setattr(factory, "_ray_node_cpus", lambda: None)
    monkeypatch.setattr(ray_utils, "get_num_cpus", lambda *a, **k: 2)  # a 2-CPU cgroup quota
    assert factory.node_cores() == 2
    monkeypatch.setattr(ray_utils, "get_num_cpus", lambda *a, **k: 8)
    assert factory.node_cores() == 4
    monkeypatch.setattr(factory, "_ray_node_cpus", lambda: 3.0)  # `ray start --num-cpus 3`
    assert factory.node_cores() == 3


def test_smt_siblings_count_as_one_core(monkeypatch, tmp_path):
    """Two hyperthreads of one core are one core, as torch's default thread count has it."""
    topology = {0: ("0", "0"), 1: ("0", "1"), 2: ("0", "0"), 3: ("0", "1")}  # 2 cores x 2 SMT
    for cpu, ids in topology.items():
        folder = tmp_path / f"cpu{cpu}" / "topology"
        folder.mkdir(parents=True)
        for name, value in zip(factory._TOPOLOGY, ids, strict=True):
            (folder / name).write_text(value + "\n")
    monkeypatch.setattr(factory, "_CPU_SYS", tmp_path)
    assert factory._physical_cores([0, 1, 2, 3]) == 2
    assert factory._physical_cores([0, 2]) == 1
    assert factory._physical_cores([0, 7]) == 2  # no topology for cpu7: the plain count


def test_channels_last_is_applied():
    model = prepare_for_device(create_model("test_resnet", 3), torch.device("cpu"), True)
    weight = next(p for p in model.parameters() if p.ndim == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    plain = prepare_for_device(create_model("test_resnet", 3), torch.device("cpu"), False)
    assert next(p for p in plain.parameters() if p.ndim == 4).is_contiguous()


def test_uint8_path_matches_float_eval_transform():
    cfg = resolve_data_config(create_model("resnet18", 3), 96)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 170, 3), dtype=np.uint8))
    reference = build_transform(cfg, training=False)(img)
    raw = build_transform(cfg, training=False, uint8=True)(img)
    assert raw.dtype == torch.uint8
    batch = raw.unsqueeze(0).repeat(2, 1, 1, 1)
    before = batch.clone()
    for channels_last in (True, False):
        out = normalize_uint8(batch, cfg, channels_last)
        assert torch.allclose(out[1], reference, atol=1e-5)
        layout = torch.channels_last if channels_last else torch.contiguous_format
        assert out.is_contiguous(memory_format=layout)
    assert torch.equal(batch, before)  # normalised in place on its own copy, never the input


def test_temperature_scaling_fixes_an_overconfident_model():
    rng = np.random.default_rng(0)
    n, k = 2000, 10
    labels = rng.integers(0, k, n)
    preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, k, n))  # ~64% correct
    logits = np.full((n, k), 0.0)
    logits[np.arange(n), preds] = 8.0  # ~99.7% confident: badly over-confident
    t = fit_temperature(logits[:1000], labels[:1000])
    assert t > 1.5
    before, _ = calibration_bins(softmax(logits[1000:]), labels[1000:])
    after, bins = calibration_bins(softmax(logits[1000:], t), labels[1000:])
    assert before > 0.25 and after < before / 3
    assert sum(b["count"] for b in bins) == 1000


def test_classification_metrics():
    logits = np.array([[3.0, 1, 0], [0, 3, 1], [0, 3, 1], [1, 0, 3]])
    m = classification_metrics(logits, np.array([0, 1, 2, 2]), 3)
    assert m["top1"] == pytest.approx(0.75)
    assert m["top5"] == 1.0
    assert m["per_class_accuracy"] == [1.0, 1.0, 0.5]
    assert m["confusion"][2].tolist() == [0, 1, 1]


def test_init_from_a_package_keeps_its_head(tmp_path):
    """Fine-tuning a served model starts from exactly its weights, classifier included."""
    from birdray.model.package import WEIGHTS_FILE, load_package
    from tests.model_fixture import make_package

    package = make_package(tmp_path / "pkg", num_classes=4, seed=3)
    loaded = load_package(package).model.eval()
    weights = str(package / WEIGHTS_FILE)
    kept = create_model("test_resnet", 4, pretrained_file=weights, keep_head=True).eval()
    fresh = create_model("test_resnet", 4, pretrained_file=weights).eval()  # ImageNet-style
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(kept(x), loaded(x), atol=1e-5)
        assert not torch.allclose(fresh(x), loaded(x), atol=1e-3)  # a new, random head


def test_training_pipeline_plans_without_torch_and_validates_with_the_eval_pixels(tmp_path):
    """Ray Data's split coordinator unpickles the pipeline's function only to plan: in a fresh
    interpreter that must not load torch (it held each split's start up by seconds on 2 cores).
    Validation batches are timm's eval transform, byte for byte, made without torch too."""
    import io
    import json
    import subprocess
    import sys

    cfg = resolve_data_config(create_model("resnet18", 3), 96)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (150, 200, 3), np.uint8))
    data = io.BytesIO()
    image.save(data, format="PNG")
    (tmp_path / "bird.png").write_bytes(data.getvalue())
    from ray import cloudpickle

    from birdray.train.data import decode_and_transform

    pickled = cloudpickle.dumps(decode_and_transform).hex()  # what the coordinator receives
    code = f"""
import json, pickle, sys
import numpy as np
fn = pickle.loads(bytes.fromhex({pickled!r}))
assert "torch" not in sys.modules, "unpickling the pipeline's function imported torch"
image = open({str(tmp_path / "bird.png")!r}, "rb").read()
batch = {{"image": np.array([image], dtype=object), "label": np.array([3])}}
out = fn(batch, json.loads({json.dumps(cfg)!r}), training=False)
assert "torch" not in sys.modules, "validation's transform imported torch"
np.save({str(tmp_path / "val.npy")!r}, out["image"])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    got = np.load(tmp_path / "val.npy")
    want = build_transform(cfg, training=False, uint8=True)(image.convert("RGB")).numpy()
    assert got.shape == (1, *want.shape) and np.array_equal(got[0], want)
