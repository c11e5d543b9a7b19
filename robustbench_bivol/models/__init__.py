"""Model zoo: every architecture is registered in :mod:`.registry` by the modules imported here."""
from . import cifar_resnet  # noqa: F401  (registers the CIFAR-style ResNets)
from . import imagenet_resnet  # noqa: F401  (torchvision ResNets, CondConv/DyConv ResNet-50)
from . import rednet  # noqa: F401  (RedNet-26/38/50/101, Bi-volution ResNet-50)
from .registry import (OPERATORS, ModelSpec, UnknownModelError, create_model, list_models,
                       load_state_dict_strict, model_spec, register_model, set_temperature)

__all__ = ["OPERATORS", "ModelSpec", "UnknownModelError", "create_model", "list_models",
           "load_state_dict_strict", "model_spec", "register_model", "set_temperature"]
