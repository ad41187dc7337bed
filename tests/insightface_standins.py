"""Small stand-ins for insightface's models, built with `onnx`, laid out as an operator lays out the real ones:

    <models_dir>/insightface/models/buffalo_l/det_10g.onnx    detector (SCRFD's 9 outputs: 3 strides x score,
                                                              box, 5 key points; 2 anchors; any input size)
    <models_dir>/insightface/models/buffalo_l/w600k_r50.onnx  identity (ArcFace: 112x112 face -> 512 numbers)
    <models_dir>/insightface/inswapper_128.onnx               swapper (128x128 face + 512 latent -> 128x128 face,
                                                              with the `emap` initializer insightface reads)

insightface routes each file by these shapes exactly as it routes the real models, so the backend's whole code
path runs. What the stand-ins compute is simple enough to predict in a test:
- a face is a bright 128x128 square centred on a multiple of 32 pixels (the detector scores the mean brightness of
  the 128x128 window around each stride-32 anchor); its key points sit where ArcFace's template puts them;
- the identity is the face crop's mean colour (R, G, B in the first three numbers);
- the swapper paints the whole face in one colour taken from the latent, 0.5 + 0.5 * latent[:3]. The emap swaps
  the first and third numbers, so a red source face comes out blue: proof that insightface's emap was applied.
"""

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FACE_SIZE = 128
STRIDES = (8, 16, 32)
# insightface's ArcFace alignment template (112x112); a 128x128 crop shifts it 8 pixels right.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


def write_standins(models_dir: Path, face_pack: str = "buffalo_l") -> None:
    pack = models_dir / "insightface" / "models" / face_pack
    pack.mkdir(parents=True, exist_ok=True)
    _save(_detector(), pack / "det_10g.onnx")
    _save(_recognition(), pack / "w600k_r50.onnx")
    _save(_swapper(), models_dir / "insightface" / "inswapper_128.onnx")


def swapped_colour(source_rgb: tuple[int, int, int]) -> np.ndarray:
    """The colour the stand-ins paint on a target face when the source face is a square of `source_rgb`."""
    identity = (np.array(source_rgb, float) - 127.5) / 127.5
    latent = identity[[2, 1, 0]] / np.linalg.norm(identity)
    return np.clip(255 * (0.5 + 0.5 * latent), 0, 255)


def _save(graph: onnx.GraphProto, path: Path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _tensor(name: str, value, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype), name)


def _detector() -> onnx.GraphProto:
    half = FACE_SIZE // 2
    key_points = (ARCFACE_TEMPLATE + (8, 0) - half) / STRIDES[-1]  # offsets from the anchor, in strides
    initializers = [
        _tensor("threshold", 0.5), _tensor("gain", 20.0), _tensor("zero", 0.0),
        _tensor("box", np.full((1, 4), half / STRIDES[-1])), _tensor("key_points", key_points.reshape(1, 10)),
        _tensor("column", [-1, 1], np.int64),
    ]
    nodes = [helper.make_node("ReduceMax", ["input.1"], ["brightness"], axes=[1], keepdims=1)]
    for stride in STRIDES:
        if stride == STRIDES[-1]:
            # The mean over the 128x128 window centred on each anchor (anchors sit at multiples of the stride).
            nodes += [
                helper.make_node("AveragePool", ["brightness"], [f"window{stride}"], kernel_shape=[FACE_SIZE] * 2,
                                 strides=[stride] * 2, pads=[half, half, half - stride, half - stride],
                                 count_include_pad=1),
                helper.make_node("Sub", [f"window{stride}", "threshold"], [f"above{stride}"]),
                helper.make_node("Mul", [f"above{stride}", "gain"], [f"logit{stride}"]),
                helper.make_node("Sigmoid", [f"logit{stride}"], [f"map{stride}"]),
            ]
        else:  # the finer strides find nothing, but still answer in the shape SCRFD gives
            nodes += [
                helper.make_node("AveragePool", ["brightness"], [f"window{stride}"], kernel_shape=[stride] * 2,
                              strides=[stride] * 2),
                helper.make_node("Mul", [f"window{stride}", "zero"], [f"map{stride}"]),
            ]
        nodes += [
            helper.make_node("Reshape", [f"map{stride}", "column"], [f"cells{stride}"]),
            helper.make_node("Concat", [f"cells{stride}", f"cells{stride}"], [f"anchors{stride}"], axis=1),
            helper.make_node("Reshape", [f"anchors{stride}", "column"], [f"score_{stride}"]),
            helper.make_node("Mul", [f"score_{stride}", "zero"], [f"zeros{stride}"]),
            helper.make_node("Add", [f"zeros{stride}", "box"], [f"bbox_{stride}"]),
            helper.make_node("Add", [f"zeros{stride}", "key_points"], [f"kps_{stride}"]),
        ]
    outputs = [helper.make_tensor_value_info(f"{kind}_{stride}", TensorProto.FLOAT, ["candidates", width])
               for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)) for stride in STRIDES]
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])
    return helper.make_graph(nodes, "scrfd_standin", [image], outputs, initializers)


def _recognition() -> onnx.GraphProto:
    first_three = np.eye(3, 512, dtype=np.float32)
    nodes = [helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["colour"]),
             helper.make_node("MatMul", ["colour", "projection"], ["fc1"])]
    return helper.make_graph(
        nodes, "arcface_standin",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["batch", 512])],
        [_tensor("projection", first_three)])


def _swapper() -> onnx.GraphProto:
    emap = np.eye(512, dtype=np.float32)[:, [2, 1, 0, *range(3, 512)]]
    nodes = [helper.make_node("Slice", ["source", "starts", "ends", "axes"], ["latent_rgb"]),
             helper.make_node("Reshape", ["latent_rgb", "per_channel"], ["colour"]),
             helper.make_node("Mul", ["colour", "half"], ["half_colour"]),
             helper.make_node("Add", ["half_colour", "half"], ["paint"]),
             helper.make_node("Mul", ["target", "zero"], ["blank"]),
             helper.make_node("Add", ["blank", "paint"], ["output"])]
    initializers = [_tensor("starts", [0], np.int64), _tensor("ends", [3], np.int64), _tensor("axes", [1], np.int64),
                    _tensor("per_channel", [1, 3, 1, 1], np.int64), _tensor("half", 0.5), _tensor("zero", 0.0),
                    _tensor("emap", emap)]  # last, as in the real model: insightface reads initializer[-1]
    return helper.make_graph(
        nodes, "inswapper_standin",
        [helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, FACE_SIZE, FACE_SIZE]),
         helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, FACE_SIZE, FACE_SIZE])], initializers)
