"""modelmesh-py: a multi-model serving mesh coordinated only through etcd."""

__version__ = "0.1.0"
