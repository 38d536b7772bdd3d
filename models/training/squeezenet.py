"""SqueezeNet v1.0 and v1.1 (Iandola et al. 2016) in PyTorch.

Fire module: a 1x1 "squeeze" convolution feeding parallel 1x1 and 3x3
(1-pixel zero padding) "expand" convolutions whose outputs are concatenated,
ReLU after each.  Downsampling (max-pool, stride 2) comes late so most
layers see large activation maps.  Dropout 50% after fire9, then conv10
(1x1, one channel per class), ReLU and global average pooling: no fully
connected layer.

v1.0: 7x7/2 conv1 with 96 filters, pools after conv1, fire4 and fire8.
v1.1: 3x3/2 conv1 with 64 filters, pools after conv1, fire3 and fire5;
2.4x less computation at the same accuracy.
"""

from __future__ import annotations

import torch
from torch import nn


class Fire(nn.Module):
    def __init__(self, in_ch: int, squeeze: int, expand1x1: int, expand3x3: int) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(in_ch, squeeze, kernel_size=1)
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.squeeze(x))
        return torch.cat([self.relu(self.expand1x1(x)), self.relu(self.expand3x3(x))], 1)


def _features(version: str) -> nn.Sequential:
    pool = lambda: nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)  # noqa: E731
    if version == "1_0":
        return nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=7, stride=2),
            nn.ReLU(inplace=True),
            pool(),
            Fire(96, 16, 64, 64),
            Fire(128, 16, 64, 64),
            Fire(128, 32, 128, 128),
            pool(),
            Fire(256, 32, 128, 128),
            Fire(256, 48, 192, 192),
            Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256),
            pool(),
            Fire(512, 64, 256, 256),
        )
    if version == "1_1":
        return nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=2),
            nn.ReLU(inplace=True),
            pool(),
            Fire(64, 16, 64, 64),
            Fire(128, 16, 64, 64),
            pool(),
            Fire(128, 32, 128, 128),
            Fire(256, 32, 128, 128),
            pool(),
            Fire(256, 48, 192, 192),
            Fire(384, 48, 192, 192),
            Fire(384, 64, 256, 256),
            Fire(512, 64, 256, 256),
        )
    raise ValueError(f"unknown SqueezeNet version {version!r}; use '1_0' or '1_1'")


class SqueezeNet(nn.Module):
    def __init__(self, version: str = "1_1", num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = _features(version)
        self.final_conv = nn.Conv2d(512, num_classes, kernel_size=1)
        self.classifier = nn.Sequential(
            nn.Dropout(p=0.5),
            self.final_conv,
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((1, 1)),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if m is self.final_conv:
                    nn.init.normal_(m.weight, mean=0.0, std=0.01)
                else:
                    nn.init.kaiming_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
        # conv10 is followed by a ReLU: a positive start keeps every class's
        # channel alive while training from scratch (otherwise a class whose
        # channel goes negative early is never predicted).
        nn.init.constant_(self.final_conv.bias, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.classifier(self.features(x)), 1)

    def grow_classes(self, num_classes: int, generator: torch.Generator) -> None:
        """Widen conv10 to ``num_classes``, keeping the old classes' filters."""
        old = self.final_conv
        new = nn.Conv2d(512, num_classes, kernel_size=1)
        with torch.no_grad():
            new.weight.normal_(0.0, 0.01, generator=generator)
            new.bias.zero_()
            new.weight[: old.out_channels] = old.weight
            new.bias[: old.out_channels] = old.bias
        self.final_conv = new
        self.classifier[1] = new
        self.num_classes = num_classes

    def replace_classifier(self, num_classes: int, generator: torch.Generator) -> None:
        """A fresh conv10 for a new class set (transfer learning): the old classes' filters are dropped.

        Same start as training from scratch (weights N(0, 0.01), bias 0.5 so that no class
        channel starts dead behind the ReLU).
        """
        new = nn.Conv2d(self.final_conv.in_channels, num_classes, kernel_size=1)
        assert new.bias is not None  # bias=True by default
        with torch.no_grad():
            new.weight.normal_(0.0, 0.01, generator=generator)
            new.bias.fill_(0.5)
        self.final_conv = new
        self.classifier[1] = new
        self.num_classes = num_classes


def export_onnx(model: SqueezeNet, path: str, image_size: int, batch: int | None = None) -> None:
    """Export to ONNX (opset 17), batch dimension dynamic unless ``batch`` is given."""
    model.eval()
    dummy = torch.zeros(batch or 1, 3, image_size, image_size)
    dynamic = None if batch else {"input": {0: "batch"}, "logits": {0: "batch"}}
    torch.onnx.export(
        model,
        (dummy,),
        path,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes=dynamic,
        opset_version=17,
        dynamo=False,
    )
