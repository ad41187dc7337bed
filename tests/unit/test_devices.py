"""One device vocabulary for every runtime: auto, cuda, cpu."""

import pytest

from deployments.devices import DEVICES, use_gpu


def test_auto_takes_the_gpu_when_there_is_one_and_cpu_never_does():
    assert use_gpu("auto", True, "torch") and not use_gpu("auto", False, "torch")
    assert not use_gpu("cpu", True, "torch")
    assert use_gpu("cuda", True, "torch")


def test_cuda_without_a_gpu_and_unknown_names_fail_at_start():
    with pytest.raises(RuntimeError, match="device cuda: ncnn finds no GPU"):
        use_gpu("cuda", False, "ncnn")
    with pytest.raises(ValueError, match=f"one of {', '.join(DEVICES)}, not 'gpu'"):
        use_gpu("gpu", True, "ncnn")
