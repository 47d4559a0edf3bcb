"""Reads an odeflow model file with the `safetensors` Python package and evaluates its
vector field with NumPy, as a PyTorch user would (FFJORD's ConcatSquash layers, tanh):
a check that the file format is what the README says.

    pip install numpy safetensors
    python3 scripts/check_model_file.py out/model.safetensors 0.25 0.3 -0.7

prints the architecture and f(t, x) for the given t and point; `odeflow` computes the same
numbers (to the last bit or one unit in the last place: NumPy's tanh differs slightly).
"""
import json
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file


def main():
    path, t = sys.argv[1], float(sys.argv[2])
    x = np.array([[float(v) for v in sys.argv[3:]]])
    tensors = load_file(path)
    with safe_open(path, "np") as f:
        meta = f.metadata()
    assert meta["format"] == "odeflow", "not an odeflow model file"
    arch = json.loads(meta["architecture"])
    assert arch["time"] == "concatsquash", "this check covers concatsquash layers"
    act = {"tanh": np.tanh, "softplus": lambda u: np.logaddexp(0, u)}[arch["activation"]]
    print("format", meta["format_version"], arch)
    for k in range(arch["blocks"]):
        pre = f"chain.{k}.odefunc.odefunc.diffeq.layers."
        h = x
        n = len(arch["hidden"]) + 1
        for i in range(n):
            g = lambda name: tensors[f"{pre}{i}.{name}"]  # noqa: E731
            gate = 1 / (1 + np.exp(-(g("_hyper_gate.weight")[:, 0] * t + g("_hyper_gate.bias"))))
            h = (h @ g("_layer.weight").T + g("_layer.bias")) * gate + g("_hyper_bias.weight")[:, 0] * t
            if i < n - 1:
                h = act(h)
        T = float(tensors[f"chain.{k}.sqrt_end_time"][0]) ** 2
        print(f"block {k}: T = {T}, f(t, x) = {h[0].tolist()}")


if __name__ == "__main__":
    main()
