"""Run the PyTorch reference (../shared/bench/torch_maml_reference.py, written for Omniglot's
28x28 gray net of 64 filters) at another shape: `cargo xtask bench --cases 84rgb` uses it for
the MAML paper's mini-ImageNet net (84x84 RGB, 32 filters, a 32x5x5 = 800-feature head).

    python xtask/torch_shapes.py REFERENCE.py --image-size 84 --channels 3 --hidden 32 [its args]

It loads the reference as a module, sets its shape constants, gives its ConvNet the head that
the shape needs (the reference's Linear(hidden, n_way) assumes a 1x1 map after 4 pools), and
runs its main with the remaining arguments. Nothing else of the reference changes: the same
functional MAML, the same timing and memory measurement.
"""

import argparse
import importlib.util
import sys

import torch.nn as nn


def main() -> int:
    reference = sys.argv[1]
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--hidden", type=int, default=64)
    shape, rest = p.parse_known_args(sys.argv[2:])
    spec = importlib.util.spec_from_file_location("torch_maml_reference", reference)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    ref.IMAGE_SIZE, ref.IN_CHANNELS, ref.HIDDEN = shape.image_size, shape.channels, shape.hidden
    side = shape.image_size
    for _ in range(ref.NUM_BLOCKS):
        side //= 2
    base = ref.ConvNet

    class ConvNet(base):
        def __init__(self, n_way: int, in_ch: int = shape.channels, hidden: int = shape.hidden):
            super().__init__(n_way, in_ch, hidden)
            self.logits = nn.Linear(hidden * side * side, n_way)

    ref.ConvNet = ConvNet
    flops = ref.forward_flops_per_image

    def forward_flops_per_image(n_way, in_ch=shape.channels, hidden=shape.hidden, size=shape.image_size):
        out = flops(n_way, in_ch, hidden, size)
        # The reference counts a hidden -> n_way head; this shape's head reads side^2 x hidden.
        out["total"] += 2 * hidden * n_way * (side * side - 1)
        out["logits"] = 2 * hidden * side * side * n_way
        return out

    ref.forward_flops_per_image = forward_flops_per_image
    return ref.main(rest)


if __name__ == "__main__":
    sys.exit(main())
