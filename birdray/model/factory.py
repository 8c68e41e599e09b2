"""Create timm models by name: from scratch, from hub weights, or from a local weights file.

The three ways a user starts a model live here so that training, the sweep and the model package
loader build the network the same way (``pretrained: false | true`` or ``pretrained_file: PATH``).
"""

from __future__ import annotations

# First, before torch/timm: the thread-safe import of the stack (see _stack.py).
from birdray.model import _stack  # noqa: F401

# isort: split
import math
import os
from pathlib import Path

import timm
import torch

from birdray.model.errors import ModelError


def create_model(
    arch: str,
    num_classes: int,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    drop_rate: float = 0.0,
    keep_head: bool = False,
) -> torch.nn.Module:
    """A timm model with a fresh ``num_classes`` head.

    ``pretrained_file`` loads a local safetensors/.pth file through timm's own
    ``pretrained_cfg_overlay`` path (classifier weights are dropped by timm when the class count
    differs), so offline machines can fine-tune from real ImageNet weights. ``keep_head``: the
    file's classifier is ours for these ``num_classes`` (a model package's weights) and is kept.
    """
    if not timm.is_model(arch):
        raise ModelError(f"unknown timm model {arch!r} (see timm.list_models())")
    kwargs: dict = {"num_classes": num_classes, "drop_rate": drop_rate}
    if pretrained_file:
        path = Path(pretrained_file)
        if not path.is_file():
            raise ModelError(f"pretrained_file not found: {path}")
        overlay: dict = {"file": str(path)}
        if keep_head:
            overlay["num_classes"] = num_classes
        return timm.create_model(arch, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    return timm.create_model(arch, pretrained=pretrained, **kwargs)


def arch_data_config(arch: str, num_classes: int, image_size: int | None = None) -> dict:
    """The timm data config a new model of ``arch`` will have (training and Tune's promotion
    both need it before a package exists): resolved on a throw-away instance, as timm does."""
    from birdray.model.preprocess import resolve_data_config

    probe = create_model(arch, num_classes=num_classes)
    try:
        return resolve_data_config(probe, image_size)
    finally:
        del probe


def pick_device(prefer_gpu: bool = True) -> torch.device:
    """CUDA when asked for and present, CPU otherwise (a GPU config still runs on a laptop)."""
    return torch.device("cuda" if prefer_gpu and torch.cuda.is_available() else "cpu")


def set_threads(num_threads: int | None) -> None:
    """Ray sets OMP_NUM_THREADS=1 in workers and replicas; give torch its cores back."""
    if num_threads and num_threads > 0:
        torch.set_num_threads(num_threads)


def node_cores() -> int:
    """The cores this process may run on: physical cores (as torch counts them; SMT siblings
    share one) in its CPU affinity, within the container's CPU limit (Ray's own count, which
    reads the cgroup quota) and the CPUs its Ray node was started with (``--num-cpus 4`` on a
    64-core host means 4)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = list(range(os.cpu_count() or 1))
    cores = _physical_cores(cpus)
    try:
        from ray._private.utils import get_num_cpus

        cores = min(cores, max(1, int(get_num_cpus(override_docker_cpu_warning=True))))
    except Exception:  # a private helper: never let it decide whether a job runs
        pass
    declared = _ray_node_cpus()
    return max(1, min(cores, int(declared)) if declared else cores)


def _physical_cores(cpus: list[int]) -> int:
    """Distinct (package, core) among ``cpus`` from Linux's topology files; else their count."""
    seen = set()
    for cpu in cpus:
        topology = _CPU_SYS / f"cpu{cpu}" / "topology"
        try:
            seen.add(tuple((topology / f).read_text().strip() for f in _TOPOLOGY))
        except OSError:
            return len(cpus)
    return len(seen) or len(cpus)


_TOPOLOGY = ("physical_package_id", "core_id")
_CPU_SYS = Path("/sys/devices/system/cpu")


def _ray_node_cpus() -> float | None:
    """The CPUs this process's Ray node declares (None outside Ray, or when it cannot tell)."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        here = ray.get_runtime_context().get_node_id()
        node = next(n for n in ray.nodes() if n.get("NodeID") == here)
        return float(node["Resources"]["CPU"])
    except Exception:  # no CPU resource, a changed API: the machine's count stands
        return None


def auto_threads(reserved_cpus: float, sharing: int = 1) -> int:
    """Torch threads for a model process on CPU whose count was left unset (0): the node's cores,
    shared with the job's other model processes there, and never fewer than its reservation.

    A Ray Data decode task reserves a whole logical CPU and uses a fraction of it, so one thread
    per reserved CPU left a 2-core laptop's scoring model on one core while the other idled
    (measured in BENCHMARKS.md). The decode tasks time-slice with the model's threads, as a
    DataLoader's workers do with those of timm's scripts.
    """
    return max(1, math.ceil(reserved_cpus), node_cores() // max(1, sharing))


def prepare_for_device(
    model: torch.nn.Module, device: torch.device, channels_last: bool | None = None
) -> torch.nn.Module:
    """Move to the device in the faster memory format (channels_last helps CNNs on CPU and GPU)."""
    use_cl = True if channels_last is None else channels_last
    model = model.to(device)
    if use_cl:
        model = model.to(memory_format=torch.channels_last)
    return model


def cpu_computes_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX), where bf16 autocast makes a
    CPU training step ~1.7x faster; elsewhere oneDNN emulates bf16 and it is slower than fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # torch's own CPUID probes
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def train_autocast(device: torch.device, amp: bool, amp_cpu: bool | None) -> torch.dtype | None:
    """The training step's autocast dtype: ``amp`` on GPUs; on CPU ``amp_cpu``, where unset
    (None) means bf16 exactly when the CPU computes it natively (``cpu_computes_bf16``)."""
    if device.type == "cuda":
        return autocast_dtype(device, amp)
    return autocast_dtype(device, cpu_computes_bf16() if amp_cpu is None else amp_cpu)


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 autocast on GPUs that support it and on CPU when asked; None means full precision."""
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16
