"""Label Studio: the HTTP client and one module per concern (auth, projects, tasks, imports, push,
pull), composed by :class:`LabelStudioPlatform`; ``server`` starts a local Label Studio."""

from labelloop.connectors.labelstudio.auth import auth_header
from labelloop.connectors.labelstudio.client import LabelStudioClient
from labelloop.connectors.labelstudio.platform import LabelStudioPlatform
from labelloop.connectors.labelstudio.push import push_predictions, write_predictions

__all__ = ["LabelStudioClient", "LabelStudioPlatform", "auth_header", "push_predictions", "write_predictions"]
