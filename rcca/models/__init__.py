"""Networks: CCA-3D / RCCA-3D and non-local modules, TSM ResNet and MF-Net backbones, insertion, conversion."""
