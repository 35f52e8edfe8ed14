"""rcca: video action recognition with recurrent 3D criss-cross attention (RCCA-3D)."""

__version__ = "0.1.0"
