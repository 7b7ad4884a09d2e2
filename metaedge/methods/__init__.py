"""Meta-learning methods, one per file, reachable by name through the registry."""

from metaedge.methods.anil import ANIL, MetaSGD
from metaedge.methods.base import FewShotMethod, create_method, list_methods, register_method
from metaedge.methods.maml import FOMAML, MAML
from metaedge.methods.protonet import ProtoNet
from metaedge.methods.segment import ProtoSeg

__all__ = [
    "ANIL",
    "FOMAML",
    "MAML",
    "FewShotMethod",
    "MetaSGD",
    "ProtoNet",
    "ProtoSeg",
    "create_method",
    "list_methods",
    "register_method",
]
