"""Which oneDNN algorithm PyTorch's CPU convolution runs for conv4 of `owt` (oneDNN's own log).

ONEDNN_VERBOSE=1 PYTHONPATH=<torch> python torch_conv_algorithm.py | grep convolution
"""

import torch

torch.manual_seed(0)
conv = torch.nn.Conv2d(384, 256, 3, padding=1).to(memory_format=torch.channels_last)
x = torch.randn(32, 384, 13, 13).to(memory_format=torch.channels_last).requires_grad_()
for _ in range(2):
    conv(x).sum().backward()
print('torch', torch.__version__, 'oneDNN', torch.backends.mkldnn.is_available())
