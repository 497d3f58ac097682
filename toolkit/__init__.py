"""rtk: take PyTorch ResNet/ResNeXt classifiers from training to deployment."""

__version__ = "0.1.0"
