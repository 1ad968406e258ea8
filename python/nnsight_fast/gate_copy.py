"""What a Gate becomes when a wrapped module is copied or pickled: its original forward.

    clone = copy.deepcopy(wrapped_module)   # clone.forward is the plain forward, not a Gate
    torch.save(wrapped_module, path)        # likewise

A copy is a new module that no NNsight wraps, so it gets no Gate.
"""


def restore_forward(forward):
    """Puts back the forward a Gate wraps on a module copied with its Gate (copy/deepcopy)."""
    return forward
