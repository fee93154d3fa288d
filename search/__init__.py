"""resnet-search: find the best ResNet for your images under a hard parameter budget."""

__version__ = "0.1.0"
