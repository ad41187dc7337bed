"""One vocabulary for every deployment's `device` argument, whatever runs the model (torch, ONNX Runtime, ncnn):

    auto   the GPU when the runtime finds one, else the CPU
    cuda   the GPU, or fail at start (a GPU node whose runtime cannot see its GPU is an operator's problem to see)
    cpu    the CPU

For ncnn "cuda" means the GPU through Vulkan: the name says which device, not which API reaches it.
"""

DEVICES = ("auto", "cuda", "cpu")


def use_gpu(device: str, gpu_available: bool, runtime: str) -> bool:
    """Whether `runtime` should run on the GPU for `device`."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "cuda" and not gpu_available:
        raise RuntimeError(f"device cuda: {runtime} finds no GPU")
    return device != "cpu" and gpu_available


def onnx_providers(device: str) -> list[str]:
    """ONNX Runtime's execution providers for `device`: CUDA first when used, the CPU always as the fallback."""
    import onnxruntime

    has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    if use_gpu(device, has_cuda, "onnxruntime (install onnxruntime-gpu: README, GPU nodes)"):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def torch_device(device: str) -> str:
    """The torch device for `device`."""
    import torch

    return "cuda" if use_gpu(device, torch.cuda.is_available(), "torch") else "cpu"
