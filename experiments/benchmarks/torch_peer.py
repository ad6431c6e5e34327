"""The PyTorch peer of the training-step benchmark: the same nets, its settings, its step.

``torch_alexnet`` writes each variant as ``models.py`` builds it (grouped convolutions for
``paper``, ``nn.LocalResponseNorm`` with the paper's constants, dropout where the variant has it);
``TorchRunner`` trains it with the same SGD (momentum 0.9, weight decay 5e-4 on the kernels) in
one *setting*: a preset (``TORCH_PRESETS``) or flags joined by '+' (``TORCH_FLAGS``). Used by
``train_step.py``'s worker processes; needs torch (``requirements-bench.txt``).
"""

import argparse
import time
from typing import TYPE_CHECKING

from experiments.benchmarks.host_memory import peak_rss_mib, rss_mib

if TYPE_CHECKING:  # torch is imported where it is used: the worker sets malloc up first
    import torch
    from torch import nn


def torch_alexnet(variant: str) -> 'nn.Sequential':
    """The variant in PyTorch, NCHW; the same layers and hyper-parameters as models.py."""
    from torch import nn

    def lrn() -> nn.Module:
        # Section 3.3: k = 2, n = 5, alpha = 1e-4 (PyTorch divides alpha by n), beta = 0.75.
        return nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)

    if variant == 'owt':
        widths, c1, groups, norm = (64, 192, 384, 256, 256), (11, 4, 2), 1, False
    else:
        widths, c1, groups, norm = (96, 256, 384, 384, 256), (11, 4, 0), 2, True
        groups = 2 if variant == 'paper' else 1
    w1, w2, w3, w4, w5 = widths
    layers = [nn.Conv2d(3, w1, c1[0], c1[1], c1[2]), nn.ReLU(inplace=True)]
    layers += [lrn()] if norm else []
    layers += [nn.MaxPool2d(3, 2), nn.Conv2d(w1, w2, 5, padding=2, groups=groups)]
    layers += [nn.ReLU(inplace=True)] + ([lrn()] if norm else [])
    layers += [nn.MaxPool2d(3, 2), nn.Conv2d(w2, w3, 3, padding=1), nn.ReLU(inplace=True)]
    layers += [nn.Conv2d(w3, w4, 3, padding=1, groups=groups), nn.ReLU(inplace=True)]
    layers += [nn.Conv2d(w4, w5, 3, padding=1, groups=groups), nn.ReLU(inplace=True)]
    layers += [nn.MaxPool2d(3, 2), nn.Flatten()]
    fc6, fc7 = nn.Linear(w5 * 36, 4096), nn.Linear(4096, 4096)
    if variant == 'owt':  # torchvision drops the inputs of fc6 and fc7
        head = [nn.Dropout(0.5), fc6, nn.ReLU(inplace=True), nn.Dropout(0.5), fc7]
        head += [nn.ReLU(inplace=True)]
    else:  # Section 4.2: the outputs of fc6 and fc7
        head = [fc6, nn.ReLU(inplace=True), nn.Dropout(0.5), fc7, nn.ReLU(inplace=True)]
        head += [nn.Dropout(0.5)]
    return nn.Sequential(*layers, *head, nn.Linear(4096, 1000))


# PyTorch's settings: '+'-joined flags; a preset names a set. A row of the table is one setting.
TORCH_FLAGS = {
    'cl': 'channels-last memory format (model and input)',
    'compile': 'torch.compile of the forward pass and the loss (default mode)',
    'autotune': 'torch.compile mode="max-autotune": CUDA graphs, autotuned kernels',
    'graph': 'the whole step (forward, loss, backward, SGD) captured in one CUDA graph, replayed'
    ' (with autotune: its kernels, mode="max-autotune-no-cudagraphs")',
    'foreach': "SGD's foreach implementation (one call per step over all tensors)",
    'fused': "SGD's fused implementation (one kernel per step)",
    'malloc': 'our malloc settings (alexnet_jax/xla_cpu.py: freed memory kept for reuse)',
}
# PyTorch at its best on each platform (issue 19): the fastest settings measured on each.
TORCH_PRESETS = {
    'eager': '',
    'best-cpu': 'cl+fused+malloc',
    'best-gpu': 'cl+autotune+graph+fused',
}


def torch_flags(setting: str) -> list[str]:
    """The flags of a setting (a preset's name, or flags joined by '+'); unknown ones raise."""
    flags = [f for f in TORCH_PRESETS.get(setting, setting).split('+') if f]
    unknown = sorted(set(flags) - set(TORCH_FLAGS))
    if unknown:
        raise ValueError(
            f'unknown PyTorch setting(s) {", ".join(unknown)} in {setting!r}; use presets '
            f'{", ".join(TORCH_PRESETS)} or flags {", ".join(TORCH_FLAGS)} joined by "+"'
        )
    return flags


class TorchRunner:
    """One variant's training step in PyTorch, in one setting's flags.

    The interface train_step's worker uses for either side: ``first_step``, ``_run``, ``memory``.
    """

    def __init__(self, args: argparse.Namespace, variant: str, flags: list[str], image_size: int):
        import torch

        self.torch = torch
        self.rss_base = rss_mib()
        self.dev = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
        # cuDNN picks the fastest algorithm per convolution shape (fixed shapes here).
        torch.backends.cudnn.benchmark = True
        torch.manual_seed(0)
        model = torch_alexnet(variant).to(self.dev)
        fmt = torch.channels_last if 'cl' in flags else torch.contiguous_format
        model = model.to(memory_format=fmt)
        kernels = [p for p in model.parameters() if p.ndim > 1]
        biases = [p for p in model.parameters() if p.ndim <= 1]
        self.opt = torch.optim.SGD(
            [{'params': kernels, 'weight_decay': 5e-4}, {'params': biases, 'weight_decay': 0.0}],
            lr=0.01,
            momentum=0.9,
            foreach=True if 'foreach' in flags else None,
            fused=True if 'fused' in flags else None,
        )
        model.train()
        loss_fn = torch.nn.CrossEntropyLoss()

        self.graphed = 'graph' in flags
        if self.graphed and self.dev.type != 'cuda':
            raise ValueError("the 'graph' setting needs a CUDA device")
        # Inside a captured graph autocast must not cache its casts (PyTorch's CUDA graph notes).
        cache = not self.graphed

        def loss_of(images, labels):
            with torch.autocast(
                self.dev.type, dtype=torch.bfloat16, enabled=args.half, cache_enabled=cache
            ):
                return loss_fn(model(images), labels)

        if 'autotune' in flags:
            # The whole-step graph is ours to capture; Inductor's own graphs would nest in it.
            mode = 'max-autotune-no-cudagraphs' if self.graphed else 'max-autotune'
            loss_of = torch.compile(loss_of, mode=mode)
        elif 'compile' in flags:
            loss_of = torch.compile(loss_of)
        self.loss_of = loss_of
        self.model = model
        self.graph = None
        size = image_size
        gen = torch.Generator().manual_seed(0)
        images = torch.randn(args.batch, 3, size, size, generator=gen)
        self.images = images.to(self.dev).contiguous(memory_format=fmt)
        self.labels = torch.randint(0, 1000, (args.batch,), generator=gen).to(self.dev)
        self.device = torch.cuda.get_device_name() if self.dev.type == 'cuda' else 'cpu'

    def eager_step(self) -> 'torch.Tensor':
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_of(self.images, self.labels)
        loss.backward()
        self.opt.step()
        return loss

    def capture(self) -> None:
        """Records one whole step in a CUDA graph (PyTorch's whole-network capture recipe).

        Warm-up steps on a side stream first: cuDNN picks its algorithms, Inductor compiles and
        SGD creates its momentum buffers, so the captured step is the steady one. Gradients are
        set to None before capture, so that every replay writes them afresh.
        """
        torch = self.torch
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self.eager_step()
        torch.cuda.current_stream().wait_stream(side)
        self.opt.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_loss = self.loss_of(self.images, self.labels)
            self.static_loss.backward()
            self.opt.step()
        # A replay must train: the last layer's weights move (SGD inside the graph).
        weight = self.model[-1].weight
        before = weight.detach().clone()
        graph.replay()
        torch.cuda.synchronize()
        if torch.equal(before, weight.detach()) or not torch.isfinite(self.static_loss).item():
            raise RuntimeError('the captured step did not update the weights or lost finiteness')
        self.graph = graph

    def run_step(self, wait: bool) -> None:
        if self.graphed:
            if self.graph is None:
                self.capture()
            self.graph.replay()
            loss = self.static_loss
        else:
            loss = self.eager_step()
        if wait:
            loss.item()  # waits for the step (and the GPU)

    def first_step(self) -> dict:
        start = time.perf_counter()
        self.run_step(wait=True)
        return {'first_step_s': time.perf_counter() - start}

    def memory(self) -> dict:
        out = {'peak_rss_delta_mib': peak_rss_mib() - self.rss_base}
        if self.dev.type == 'cuda':
            out['device_peak_mib'] = self.torch.cuda.max_memory_allocated() / 2**20
        return out
