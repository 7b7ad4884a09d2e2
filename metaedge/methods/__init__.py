"""Meta-learning methods, one per file, reachable by name through the registry."""

from metaedge.methods.base import FewShotMethod, create_method, list_methods, register_method
from metaedge.methods.protonet import ProtoNet

__all__ = ["FewShotMethod", "ProtoNet", "create_method", "list_methods", "register_method"]
